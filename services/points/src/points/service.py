"""The points service: what it serves, consumes and publishes."""

from kizuna.kit.service import Service

from points.settings import Settings

service = Service(name="points", settings=Settings)

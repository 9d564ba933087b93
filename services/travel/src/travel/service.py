"""The travel service: what it serves, consumes and publishes."""

from kizuna.kit.service import Service

from travel.settings import Settings

service = Service(name="travel", settings=Settings)

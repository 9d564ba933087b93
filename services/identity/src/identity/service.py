"""The identity service: what it serves, consumes and publishes."""

from kizuna.kit.service import Service

from identity.settings import Settings

service = Service(name="identity", settings=Settings)

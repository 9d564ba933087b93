"""The shop service: what it serves, consumes and publishes."""

from kizuna.kit.service import Service

from shop.settings import Settings

service = Service(name="shop", settings=Settings)

"""The fintech service: what it serves, consumes and publishes."""

from kizuna.kit.service import Service

from fintech.settings import Settings

service = Service(name="fintech", settings=Settings)

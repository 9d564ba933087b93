"""fintech's own tests run the service in this process (see fintech_world)."""

from .fintech_world import fintech, fintech_overrides, streams_to_reset

__all__ = ["fintech", "fintech_overrides", "streams_to_reset"]

"""fintech beside a real points process: the service runs in this process as in its own tests
(services/fintech/tests/fintech_world.py)."""

from services.fintech.tests.fintech_world import fintech, fintech_overrides, streams_to_reset

__all__ = ["fintech", "fintech_overrides", "streams_to_reset"]

"""A service's stream has the retention its settings give (STREAM_MAX_AGE_SECONDS,
STREAM_MAX_BYTES), on a real JetStream: set when created, applied to an existing stream when the
owner starts again, old events dropped first; a reader never changes the owner's limits."""

from __future__ import annotations

import uuid

import nats
from kizuna.kit.events import ensure_stream


def stream_name() -> str:
    return f"limits{uuid.uuid4().hex[:10]}"


async def test_owner_sets_and_updates_the_limits(nats_url: str) -> None:
    name = stream_name()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, name)
        info = await js.stream_info(name.upper())
        assert not info.config.max_age and (info.config.max_bytes or -1) == -1, "no limits by default"

        await ensure_stream(js, name, max_age_seconds=3600, max_bytes=1024)
        info = await js.stream_info(name.upper())
        assert info.config.max_age == 3600
        assert info.config.max_bytes == 1024

        # A reader that starts later creates nothing and changes nothing.
        await ensure_stream(js, name, owner=False)
        info = await js.stream_info(name.upper())
        assert info.config.max_age == 3600 and info.config.max_bytes == 1024

        for i in range(50):
            await js.publish(f"{name}.thing.happened", b"x" * 100, headers={"Nats-Msg-Id": f"{name}-{i}"})
        state = (await js.stream_info(name.upper())).state
        assert state.bytes <= 1024, "beyond max_bytes the oldest events go"
        assert state.first_seq > 1 and state.last_seq == 50
        await js.delete_stream(name.upper())
    finally:
        await nc.close()

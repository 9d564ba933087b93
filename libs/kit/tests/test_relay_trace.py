"""What the outbox relay sends while no span is exported: the event goes with the trace context it
was staged in (no producer span is made for nobody), and JetStream's acknowledgement is counted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kizuna.kit import telemetry
from kizuna.kit.events import OutboxMessage
from kizuna.kit.service import Runtime
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.testing import counter_values, reading_metrics, wait_until
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlmodel import col, select

from .demo.service import DemoEffect
from .test_events import count, headers_of, post_note_in_trace, stream_messages

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def metric_reader(demo: Runtime[ServiceSettings]) -> Iterator[InMemoryMetricReader]:
    with reading_metrics() as reader:
        yield reader


async def test_while_no_span_is_exported_an_event_goes_with_the_trace_it_was_staged_in(
    demo: Runtime[ServiceSettings], nats_url: str, metric_reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another test in this process may have added a span processor; this one is about none.
    monkeypatch.setattr(telemetry, "_exporting", False)
    created = await post_note_in_trace(demo, "traced-untraced", TRACEPARENT)
    event_id = created.json()["event_id"]
    await wait_until(lambda: count(demo.db, DemoEffect))

    [message] = [m for m in await stream_messages(nats_url, "demo.note.created") if headers_of(m)["ce-id"] == event_id]
    async with demo.db.sessions() as session:
        row = (await session.exec(select(OutboxMessage).where(col(OutboxMessage.event_id) == event_id))).one()
    staged = row.headers["traceparent"]
    # The request's trace, from the span the event was staged in: the relay added no span of its own.
    assert staged.split("-")[1] == TRACEPARENT.split("-")[1]
    assert headers_of(message)["traceparent"] == staged
    assert headers_of(message)["ce-source"] == "kizuna/demo"
    assert row.sent_at is not None
    published = counter_values(metric_reader, "messaging.client.published.messages", "messaging.destination.name")
    assert published.get("demo.note.created", 0) >= 1

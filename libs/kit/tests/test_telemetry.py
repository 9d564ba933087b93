"""What tracing costs while nothing receives spans, and what it records once something does.

Telemetry is set up once per process, so each check runs in a fresh interpreter of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

SCRIPT = """
import asyncio, json, os
from kizuna.kit.db import Database
from kizuna.kit.telemetry import add_span_processor, configure_telemetry, tracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

configure_telemetry("demo")
exporter = InMemorySpanExporter()

def child_of(span, parent):
    return span.parent.span_id == parent.get_span_context().span_id if span.parent else None

async def statement(db):
    with tracer.start_as_current_span("request") as span:
        async with db.sessions() as session:
            await session.execute(text("SELECT 1"))
        return span, span.is_recording()

async def main():
    db = Database("sqlite+aiosqlite:///" + os.environ["DB_FILE"])
    report = {}
    off, off_recording = await statement(db)
    report["off"] = {
        "listeners": len(db.engine.sync_engine.dispatch.before_cursor_execute),
        "recording": off_recording,
        "valid_ids": off.get_span_context().is_valid,
        "spans": len(exporter.get_finished_spans()),
    }
    add_span_processor(SimpleSpanProcessor(exporter))
    async with db.sessions() as session:  # outside any trace
        await session.execute(text("SELECT 2"))
    on, on_recording = await statement(db)
    spans = exporter.get_finished_spans()
    report["on"] = {
        "listeners": len(db.engine.sync_engine.dispatch.before_cursor_execute),
        "recording": on_recording,
        "spans": [[s.name.split()[0], s.kind.name, child_of(s, on), (s.attributes or {}).get("db.query.text")]
                  for s in spans],
    }
    await db.dispose()
    print(json.dumps(report))

asyncio.run(main())
"""


def _run(tmp_path: Path) -> dict[str, Any]:
    env = {"DB_FILE": str(tmp_path / "t.db"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_without_a_span_processor_nothing_is_recorded_and_sql_is_not_instrumented(tmp_path: Path) -> None:
    """No exporter: spans keep their ids (logs, propagation) but are not recorded, and the engine has
    no listener of the SQL instrumentation, so a statement costs what it did untraced."""
    report = _run(tmp_path)
    assert report["off"] == {"listeners": 0, "recording": False, "valid_ids": True, "spans": 0}


def test_once_spans_are_received_each_statement_in_a_trace_is_a_span(tmp_path: Path) -> None:
    """The engine created before is instrumented when a processor arrives; the statement outside
    any trace makes no span of its own, the one inside is a CLIENT child of its request."""
    report = _run(tmp_path)
    assert report["on"]["listeners"] == 1 and report["on"]["recording"] is True
    # (On SQLite the kit opens every transaction with BEGIN IMMEDIATE: a statement too.)
    assert report["on"]["spans"] == [
        ["BEGIN", "CLIENT", True, "BEGIN IMMEDIATE"],
        ["SELECT", "CLIENT", True, "SELECT 1"],
        ["request", "INTERNAL", None, None],
    ]

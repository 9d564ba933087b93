"""A service and `make up` stop on SIGINT and SIGTERM whatever signal disposition they inherited:
a shell that starts a job in the background (`&`, nohup, some CI runners) leaves SIGINT ignored."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from kizuna.kit.testing import NatsServer, end_process, spawn

from .demo.process import demo_env

TESTS = Path(__file__).parent
ROOT = TESTS.parents[2]


def _ignoring(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(sig, signal.SIG_IGN)

    return preexec


def _wait_for(predicate: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"exited with {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


def test_a_process_started_this_way_really_has_sigint_ignored() -> None:
    # The premise of the tests below: without handlers of its own, such a process survives SIGINT.
    sleeper = spawn([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=_ignoring(signal.SIGINT))
    try:
        time.sleep(0.3)
        os.killpg(sleeper.pid, signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(1)
    finally:
        end_process(sleeper)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_service_stops_on_a_signal_it_inherited_as_ignored(
    sig: signal.Signals, tmp_path: Path, nats_server: NatsServer
) -> None:
    ports_file = tmp_path / "ports.json"
    env = demo_env(tmp_path, nats_server.url, ports_file)
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        service = spawn(
            [sys.executable, "-m", "demo.service"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignoring(sig),
        )
    try:
        _wait_for(ports_file.exists, service, 60, "ports reported")
        ports = json.loads(ports_file.read_text())
        assert httpx.get(f"http://127.0.0.1:{ports['http']}/readyz", timeout=5).status_code == 200
        service.send_signal(sig)
        assert service.wait(30) == 0, log_path.read_text()
        assert "stop signal received" in log_path.read_text()
    finally:
        end_process(service)


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment mentions `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_make_up_stops_on_ctrl_c_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    # `make up` serves fixed ports (its printed URLs); a random offset keeps them clear of others'.
    offset = next(
        o
        for o in (random.randrange(1000, 15000, 10) for _ in range(50))
        if all(_free(p + o) for p in (4322, 8000, 8001, 50050, 50051))
    )
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "KIZUNA_ISSUER", "DATABASE_URL")}
    env.update(KIZUNA_PORT_OFFSET=str(offset), KIZUNA_DATA_DIR=str(data_dir))
    out_path = tmp_path / "up.log"
    with out_path.open("wb") as out:
        up = spawn(
            # identity and points: the smallest stack make up runs.
            [sys.executable, "-m", "kizuna.kit.devstack", "points", "--no-seed"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignoring(signal.SIGINT),
        )
    try:
        _wait_for(lambda: "Press Ctrl-C to stop." in out_path.read_text(), up, 120, "stack up")
        started = [pid for pid in _processes_with(str(data_dir)) if pid != up.pid]
        assert len(started) >= 3, "nats-server, identity and points should be running now"
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert up.wait(60) == 0, out_path.read_text()
        assert "Stopped; no Kizuna process left running." in out_path.read_text()
        assert _processes_with(str(data_dir)) == [], "processes left running after Ctrl-C"
    finally:
        end_process(up)


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"],
    start_new_session=True,  # outside the parent's process group, as a daemonizing server would be
)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_end_process_kills_what_ignores_sigterm_and_what_left_the_group() -> None:
    parent = spawn([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
        started = time.monotonic()
        code = end_process(parent, timeout=1)
        assert code == -signal.SIGKILL  # SIGTERM was ignored: SIGKILL after the bounded wait
        assert time.monotonic() - started < 10
        status = Path(f"/proc/{child}/status")
        assert not status.exists() or "State:\tZ" in status.read_text(), "the child that left the group survived"
    finally:
        end_process(parent)


def test_a_service_whose_collector_is_away_still_stops_within_its_grace(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """OTLP export on, the collector unreachable: SIGTERM still ends the process cleanly in the time
    the manifests allow after the drain (`tests/deploy`: 1 + 3 + 1 + 6 s). The exporters' own 10 s
    default, ignored flush timeouts and the SDK's exit hook exporting again made it 20 s and more."""
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        ports_file = tmp_path / "ports.json"
        env = demo_env(
            tmp_path,
            nats_server.url,
            ports_file,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}",
            OTEL_EXPORTER_OTLP_INSECURE="true",
        )
        for name in (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        ):
            env.pop(name, None)
        log_path = tmp_path / "demo.log"
        with log_path.open("wb") as log:
            service = spawn([sys.executable, "-m", "demo.service"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(ports_file.exists, service, 60, "ports reported")
            ports = json.loads(ports_file.read_text())
            # A request that is traced and measured, so both exporters have something to send.
            httpx.get(f"http://127.0.0.1:{ports['http']}/nothing-here", timeout=5)
            stopping = time.monotonic()
            service.send_signal(signal.SIGTERM)
            assert service.wait(15) == 0, log_path.read_text()
            assert time.monotonic() - stopping < 1 + 3 + 1 + 6 + 3, log_path.read_text()
            assert "Failed to export" in log_path.read_text(), "the collector was meant to be unreachable"
        finally:
            end_process(service)

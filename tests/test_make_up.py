"""`make up` on this checkout: every declared service reaches ready, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kizuna.kit import declaration
from kizuna.kit.testing import devstack_port_offset, end_process, spawn

pytestmark = pytest.mark.long(60)

ROOT = Path(__file__).resolve().parents[1]
# Every declared service and its local ports, as make up derives them.
SERVICES = {d.name: (d.http_port, d.grpc_port) for d in declaration.discover()}


def _pick_offset() -> int:
    return devstack_port_offset()


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _signs_in(identity_url: str, email: str, password: str) -> None:
    with httpx.Client(base_url=identity_url, timeout=10) as browser:
        form = browser.get("/signin")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf, form.text
        done = browser.post("/signin", data={"email": email, "password": password, "csrf_token": csrf[1]})
        assert done.status_code in (302, 303), done.text
        account = browser.get("/account")
        assert account.status_code == 200 and email in account.text


def test_a_busy_port_stops_make_up_with_a_message_naming_it(tmp_path: Path) -> None:
    offset = _pick_offset()
    shop_http = SERVICES["shop"][0] + offset
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "KIZUNA_ISSUER", "DATABASE_URL")}
    env.update(KIZUNA_PORT_OFFSET=str(offset), KIZUNA_DATA_DIR=str(tmp_path / "data"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", shop_http))
        squatter.listen()
        up = spawn(
            ["make", "--no-print-directory", "up"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            out, _ = up.communicate(timeout=120)
        finally:
            end_process(up)
    assert up.returncode != 0
    assert f"shop HTTP port {shop_http}" in out, out
    assert _processes_with(str(tmp_path / "data")) == [], "nothing may be left running after a refused start"


@pytest.mark.timeout(420)
def test_make_up_brings_every_service_to_ready_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    offset = _pick_offset()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "KIZUNA_ISSUER", "DATABASE_URL")}
    env.update(KIZUNA_PORT_OFFSET=str(offset), KIZUNA_DATA_DIR=str(data_dir))
    proc = spawn(
        ["make", "--no-print-directory", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As a background job (`&`, nohup, some CI runners) starts it: with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    output: list[str] = []
    try:
        # Migrations, six services and the demo seeds: 40-90 s while the rest of the suite runs.
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C to stop." in line:
                break
        text = "".join(output)
        assert "Press Ctrl-C to stop." in text, text
        for name, (http, grpc_port) in SERVICES.items():
            url = f"http://127.0.0.1:{http + offset}"
            assert url in text, f"{name} URL not printed"
            ready = httpx.get(f"{url}/readyz", timeout=5)
            assert ready.status_code == 200, (name, ready.text)
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port + offset}") as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert status.status == health_pb2.HealthCheckResponse.SERVING, name
        assert _processes_with(str(data_dir)), "the services should be running now"
        # The console says how to sign in as the demo member, and those credentials work.
        demo = re.search(r"identity\s+demo member\s+(\S+@\S+) / (\S+)\s+\((mbr_\w+)\)", text)
        assert demo, f"demo member credentials not printed:\n{text}"
        _signs_in(f"http://127.0.0.1:{SERVICES['identity'][0] + offset}", demo[1], demo[2])
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            rest, _ = proc.communicate(timeout=60)
            output.append(rest)
        finally:
            end_process(proc)  # nothing when it stopped by itself; SIGKILL to whatever is left otherwise
    text = "".join(output)
    assert "no Kizuna process left running" in text, text
    time.sleep(0.5)
    assert _processes_with(str(data_dir)) == [], "processes left behind after Ctrl-C"

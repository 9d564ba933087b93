"""The demo service as its own process (`python -m demo.service`), the way production runs a service:
its environment, and its ports once it reports them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def demo_env(tmp_path: Path, nats_url: str, ports_file: Path, **settings: str) -> dict[str, str]:
    """This process's environment plus the demo's: SQLite under `tmp_path`, ports of its choosing
    reported to `ports_file`, and `settings` (environment names) on top."""
    return {
        **os.environ,
        "PYTHONPATH": str(TESTS),
        "NATS_URL": nats_url,
        "KIZUNA_ISSUER": "http://127.0.0.1:1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "HTTP_PORT": "0",
        "GRPC_PORT": "0",
        "KIZUNA_PORTS_FILE": str(ports_file),
        **settings,
    }


def wait_for_ports(ports_file: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> dict[str, int]:
    """The ports the service reported once ready; fails with its log if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not ports_file.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"not ready after {timeout} s:\n" + log.read_text()
        time.sleep(0.1)
    ports: dict[str, int] = json.loads(ports_file.read_text())
    return ports

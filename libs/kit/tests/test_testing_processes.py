"""What the test plugin starts dies with the test run, even when the run is killed outright (SIGKILL,
the OOM killer): no finalizer runs then, so the kernel has to end the children (Linux only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kizuna.kit.testing import end_process, spawn

# A test run in miniature: one nats-server started from the main thread and one from a thread that
# ends at once (the parent death signal follows the thread that started a process, so this one
# must not die with its thread), then it waits to be killed.
PARENT = """
import sys, threading, time
from pathlib import Path
from kizuna.kit.testing import NatsServer

store = Path(sys.argv[1])
servers = [NatsServer(0, store / "main").start()]
starter = threading.Thread(target=lambda: servers.append(NatsServer(0, store / "thread").start()))
starter.start()
starter.join()
print(" ".join(str(server.process.pid) for server in servers), flush=True)
time.sleep(600)
"""


def _nats_server_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z" and b"nats-server" in command


@pytest.mark.skipif(sys.platform != "linux", reason="the parent death signal is Linux's")
def test_a_test_run_killed_outright_leaves_no_nats_server_behind(tmp_path: Path) -> None:
    parent = spawn([sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2, f"the parent did not start its servers: {line!r}"
        time.sleep(0.5)
        assert all(_nats_server_running(pid) for pid in pids), "a server died before its parent"

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_nats_server_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if _nats_server_running(pid)], "nats-server outlived its killed parent"
    finally:
        end_process(parent)

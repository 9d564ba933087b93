"""Serving from more than one process: a supervisor and N workers sharing the service's ports.

One Python process uses one core. With `KIZUNA_WORKERS=N` (N > 1; 0: one per CPU this process may
run on) `python -m <service>` becomes a supervisor that:

- migrates the database once (when `MIGRATE_ON_START`), before any worker starts;
- binds the HTTP and gRPC ports itself, with SO_REUSEPORT but without listening, so a busy port
  fails at once with the usual message and port 0 becomes one real port that every worker
  reuses; each worker then listens on its own socket bound to that port, and the kernel spreads
  new connections over the workers;
- forks the workers: the first one alone, the others once it is ready, so first-start work
  (creating a signing key, a stream, a durable consumer) happens once; each worker is the whole
  service (HTTP, gRPC, consumers, jobs and outbox relay), as one more replica would be;
- reports the ports (`KIZUNA_PORTS_FILE`) once every worker is ready;
- forwards SIGTERM / SIGINT to the workers, which drain as a single process does, and exits once
  they all have (SIGKILL for any still running `shutdown_grace_seconds` + 5 s later);
- replaces a worker that dies while serving; a worker that dies before it was ever ready stops the
  whole service with its exit code (a start-up error, reported once, not a restart loop).

Workers are ended by the kernel when the supervisor dies (PR_SET_PDEATHSIG), so none outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

from kizuna.kit.telemetry import WORKER_VARIABLE

log = logging.getLogger("kizuna.kit.workers")

# Extra seconds past the workers' own grace before the supervisor kills what still runs.
KILL_MARGIN_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def worker_count(configured: int) -> int:
    """The number of serving processes `KIZUNA_WORKERS` asks for (0: one per usable CPU)."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class PortBusyError(SystemExit):
    """A port the service needs is taken; the message names it."""


def bind_port(host: str, port: int, what: str, *, listen: bool, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port); listening (non-blocking, for the HTTP server) or only
    holding the port. Raises PortBusyError naming the port when it is taken."""
    host = host.strip("[]")
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on accepted sockets whose proto is
    # IPPROTO_TCP, and they inherit it from this one. With proto 0, Nagle held back the second
    # write of each response until the client's delayed ACK (~40 ms per request, bench/token_bench.py).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            message = f"{what} port {port} on {host} is already in use; free it or set {what.upper()}_PORT"
            print(message, file=sys.stderr)
            raise PortBusyError(message) from None
        raise
    if listen:
        sock.listen(2048)
        sock.setblocking(False)
    return sock


@dataclass
class _Worker:
    pid: int
    slot: int  # 0 .. N-1, reused by a replacement (its metrics' instance id)
    ready: bool = False


class Supervisor:
    """Runs `serve_worker(http_port, grpc_port, notify_ready)` in `count` forked processes (see the
    module docstring); `run()` returns the exit code."""

    def __init__(
        self,
        name: str,
        *,
        count: int,
        http: tuple[str, int],
        grpc: tuple[str, int],
        grace_seconds: float,
        serve_worker: Callable[[int, int, Callable[[], None]], int],
        report_ports: Callable[[int, int], None],
    ) -> None:
        self.name = name
        self.count = count
        self.http = http
        self.grpc = grpc
        self.grace_seconds = grace_seconds
        self.serve_worker = serve_worker
        self.report_ports = report_ports
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.kill_at: float | None = None
        self.exit_code = 0
        self.reported = False
        self._selector_fd = -1

    def run(self) -> int:
        held = [
            bind_port(*self.http, "http", listen=False, reuse_port=True),
            bind_port(*self.grpc, "grpc", listen=False, reuse_port=True),
        ]
        http_port, grpc_port = (sock.getsockname()[1] for sock in held)
        wake_r, wake_w = os.pipe()
        ready_r, ready_w = os.pipe()
        for fd in (wake_r, wake_w, ready_r):
            os.set_blocking(fd, False)
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _wake_only)
        inherited = [wake_r, wake_w, ready_r, *(sock.fileno() for sock in held)]
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        selector.register(ready_r, selectors.EVENT_READ)
        self._selector_fd = selector.fileno()
        buffer = b""
        log.info("supervisor starting workers", extra={"workers": self.count, "http_port": http_port})
        try:
            while True:
                self._reap()
                if self.stopping:
                    if not self.workers:
                        return self.exit_code
                    if self.kill_at is not None and time.monotonic() >= self.kill_at:
                        for pid in self.workers:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                        self.kill_at = None
                elif not self.workers or (len(self.workers) < self.count and self.workers_ready()):
                    # The first worker starts alone; the others (and replacements) once one is ready.
                    self._fork(http_port, grpc_port, ready_w, inherited)
                    continue
                for key, _ in selector.select(timeout=1.0):
                    if key.fd == wake_r:
                        with contextlib.suppress(BlockingIOError):
                            while os.read(wake_r, 512):
                                pass
                    else:
                        with contextlib.suppress(BlockingIOError):
                            buffer += os.read(ready_r, 4096)
                        *lines, buffer = buffer.split(b"\n")
                        for line in lines:
                            self._mark_ready(int(line))
                if not self.reported and len(self.workers) == self.count and self.workers_ready():
                    self.reported = True
                    self.report_ports(http_port, grpc_port)
                    log.info("all workers ready", extra={"workers": self.count, "pids": sorted(self.workers)})
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            selector.close()
            for fd in (wake_r, wake_w, ready_r, ready_w):
                os.close(fd)
            for sock in held:
                sock.close()

    def workers_ready(self) -> bool:
        return all(worker.ready for worker in self.workers.values())

    def _mark_ready(self, pid: int) -> None:
        worker = self.workers.get(pid)
        if worker is not None:
            worker.ready = True
            log.info("worker ready", extra={"pid": pid})

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("stop signal received; draining the workers", extra={"signal": signal.Signals(signum).name})
            self.stopping = True
            self.kill_at = time.monotonic() + self.grace_seconds + KILL_MARGIN_SECONDS
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                if code != 0:
                    self.exit_code = 1
                continue
            if not worker.ready:
                # A start-up failure: every worker would fail the same way.
                log.error("worker failed to start; stopping", extra={"pid": pid, "exit_code": code})
                self.exit_code = code if code > 0 else 1
                self._on_stop(signal.SIGTERM, None)
                continue
            log.warning("worker exited; starting a new one", extra={"pid": pid, "exit_code": code})

    def _fork(self, http_port: int, grpc_port: int, ready_w: int, inherited: list[int]) -> None:
        supervisor = os.getpid()
        taken = {worker.slot for worker in self.workers.values()}
        slot = min(set(range(self.count)) - taken)
        pid = os.fork()
        if pid:
            self.workers[pid] = _Worker(pid, slot)
            log.info("worker started", extra={"pid": pid, "worker": slot})
            return
        os.environ[WORKER_VARIABLE] = str(slot)
        notify = _notifier(ready_w)
        fds = [*inherited, self._selector_fd]
        _run_worker(supervisor, fds, lambda: self.serve_worker(http_port, grpc_port, notify))


def _wake_only(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD: the wakeup fd already woke the supervisor's loop, which reaps."""


def _notifier(ready_w: int) -> Callable[[], None]:
    def notify() -> None:
        os.write(ready_w, f"{os.getpid()}\n".encode())

    return notify


def _run_worker(supervisor: int, inherited: list[int], serve: Callable[[], int]) -> NoReturn:
    """The forked child: forget the supervisor's signal set-up, die with it, serve, exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() != supervisor:  # it died before the line above took effect
            os._exit(1)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        code = serve()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker failed")
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc: Any = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

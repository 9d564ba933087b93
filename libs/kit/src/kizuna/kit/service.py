"""The service runner: one process serves HTTP (uvicorn) and gRPC (grpc.aio) in one asyncio loop,
runs consumers, background jobs and the outbox relay, and shuts down gracefully on SIGTERM.

A service is declared, not programmed:

    service = Service(name="points", settings=Settings, http=http_api.router,
                      grpc=[(points_pb2_grpc.add_PointsServiceServicer_to_server, PointsApi)],
                      consumers=events.consumers)

and `python -m points` calls `service.main()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import nats
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from kizuna.kit import natsauth
from kizuna.kit.auth import ServiceTokenClient, TokenVerifier
from kizuna.kit.bounds import InputGuard, install_validation_errors
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.declaration import FILE_NAME as DECLARATION_FILE
from kizuna.kit.declaration import Declaration
from kizuna.kit.declaration import load as declaration_file
from kizuna.kit.errors import DATABASE_REFUSALS, DomainError
from kizuna.kit.events import Consumer, ConsumerWorker, OutboxRelay, StreamLimits, ensure_stream
from kizuna.kit.logs import configure_logging
from kizuna.kit.privacy import Privacy, erasure_consumer, export_router
from kizuna.kit.revocation import RevocationFeed
from kizuna.kit.rpc import GrpcServer
from kizuna.kit.settings import ServiceSettings, load_settings
from kizuna.kit.telemetry import configure_telemetry, instrument_http, shutdown_telemetry
from kizuna.kit.workers import Supervisor, bind_port, worker_count
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

log = logging.getLogger("kizuna.kit.service")

S = TypeVar("S", bound=ServiceSettings)
C = TypeVar("C")
T = TypeVar("T")

ReadinessCheck = Callable[["Runtime[Any]"], Awaitable[None]]
Job = Callable[["Runtime[Any]"], Coroutine[Any, Any, None]]
Hook = Callable[["Runtime[Any]"], Awaitable[None]]
GrpcRegistration = tuple[Callable[[Any, grpc.aio.Server], None], Callable[["Runtime[Any]"], Any]]
# Builds what the service's routes, servicers, consumers and jobs share while it runs (its context).
ContextFactory = Callable[["Runtime[Any]"], Any]


@dataclass
class Runtime(Generic[S]):
    """What a running service holds: settings, database, NATS, and its own state (`state`)."""

    name: str
    settings: S
    db: Database
    verifier: TokenVerifier
    service_tokens: ServiceTokenClient | None = None
    nc: NATS | None = None
    js: JetStreamContext | None = None
    relay: OutboxRelay | None = None
    # identity's revocation events feeding `verifier.deny_list` (see kizuna.kit.revocation).
    revocations: RevocationFeed | None = None
    grpc_port: int = 0
    http_port: int = 0
    ready: bool = False
    stopping: bool = False
    # Readiness: since when (monotonic) each shared dependency has been failing, while it fails.
    failing_since: dict[str, float] = field(default_factory=dict)
    # The one clock: every rule that depends on time reads it (tests swap in a FrozenClock).
    clock: Clock = field(default_factory=Clock)
    # What `Service(context=...)` built at start; read it typed with `context_as` / `context_of`.
    context: Any = None
    state: dict[str, Any] = field(default_factory=dict)

    def context_as(self, cls: type[C]) -> C:
        """The service's context, typed; fails clearly before it is built or if it is another type."""
        if not isinstance(self.context, cls):
            raise RuntimeError(f"{self.name} has no {cls.__name__} context (it is {type(self.context).__name__})")
        return self.context

    @property
    def jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise RuntimeError("NATS is not connected yet")
        return self.js


def _declared(directory: Path, name: str) -> Declaration:
    """A service's declaration beside its wiring; a test double without one is declared by name."""
    path = directory / DECLARATION_FILE
    if path.exists():
        return declaration_file(path)
    return Declaration(name=name, slot=0, label=name.capitalize())


def _report_ports(http_port: int, grpc_port: int) -> None:
    """Write the bound ports as JSON where `KIZUNA_PORTS_FILE` says: a supervisor that started us on
    port 0 reads them there, so nothing has to guess a free port in advance."""
    target = os.environ.get("KIZUNA_PORTS_FILE")
    if not target:
        return
    path = Path(target)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"http": http_port, "grpc": grpc_port}))
    partial.replace(path)  # atomic: a reader sees the whole file or none


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run_loop(main: Coroutine[Any, Any, T], kind: str = "asyncio") -> T:
    """Run `main` to completion on a new event loop: asyncio's own, or uvloop's (libuv, written in
    Cython: less CPU per socket event; `EVENT_LOOP=uvloop`)."""
    if kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


class Service(Generic[S]):
    """A Kizuna service: its name, settings, HTTP routes, gRPC servicers, consumers and jobs."""

    def __init__(
        self,
        name: str | None = None,
        *,
        settings: type[S],
        declaration: Declaration | None = None,
        http: APIRouter | None = None,
        grpc: Sequence[GrpcRegistration] = (),
        consumers: Sequence[Consumer] | Callable[[Runtime[S]], Sequence[Consumer]] = (),
        jobs: Sequence[Job] = (),
        on_start: Sequence[Hook] = (),
        on_stop: Sequence[Hook] = (),
        readiness: Sequence[ReadinessCheck] = (),
        grpc_interceptors: Callable[[Runtime[S]], Sequence[grpc.aio.ServerInterceptor]] | None = None,
        migrations_dir: Path | None = None,
        commands: dict[str, Callable[[S, list[str]], int]] | None = None,
        configure_app: Callable[[FastAPI], None] | None = None,
        context: ContextFactory | None = None,
        verify_tokens: bool = True,
        jwks_readiness: bool = True,
        web_sign_in_scopes: str | None = None,
        privacy: Privacy | None = None,
        grpc_own_auth: Sequence[str] = (),
    ) -> None:
        # The caller's frame only: inspect.stack() would read the source of every frame (~0.2 s).
        caller_dir = Path(sys._getframe(1).f_code.co_filename).parent
        if declaration is None:
            # The declaration beside the wiring file (`service.toml`) says who the service is.
            declaration = (
                declaration_file(caller_dir / DECLARATION_FILE) if name is None else _declared(caller_dir, name)
            )
        if name is not None and name != declaration.name:
            raise ValueError(f"Service({name!r}) but its declaration is named {declaration.name!r}")
        if privacy is not None and not declaration.privacy and declaration.path is not None:
            raise ValueError(f"{declaration.name} answers privacy requests: declare [privacy] holds_member_data = true")
        self.declaration = declaration
        name = declaration.name
        if web_sign_in_scopes is None and declaration.sign_in is not None:
            web_sign_in_scopes = " ".join(declaration.sign_in)
        self.name = name
        # gRPC services that authenticate their callers themselves (not with Kizuna tokens); every
        # other method is verified by the kit's gRPC server (`auth.authorized`).
        self.grpc_own_auth = list(grpc_own_auth)
        self.settings_cls = settings
        self.router = http
        self.grpc = list(grpc)
        # A list, or a factory given the runtime (for handlers that need settings, clock, peers).
        self.consumers = consumers
        self.jobs = list(jobs)
        self.on_start = list(on_start)
        self.on_stop = list(on_stop)
        self.readiness = list(readiness)
        # grpc server interceptors, run on every call before the kit's own handling (`rpc.GrpcServer`).
        self.grpc_interceptors = grpc_interceptors
        self.commands = dict(commands or {})
        self.configure_app = configure_app
        # Every RPC is authorized, and readiness includes identity's JWKS, unless a service
        # (identity itself, or a test double) opts out.
        self.verify_tokens = verify_tokens
        # The issuer itself must not wait for its own JWKS: behind a Kubernetes Service that
        # request would only reach pods that are already ready.
        self.jwks_readiness = jwks_readiness and verify_tokens
        # Web pages: members sign in through identity (OIDC code + PKCE) with these scopes;
        # the kit mounts /auth/* and the shared stylesheet. None: the service has no pages.
        self.web_sign_in_scopes = web_sign_in_scopes
        # Export and erasure of a member's data (see kizuna.kit.privacy).
        self.privacy = privacy
        # Built once at start (after NATS, before the start hooks): `factory(runtime) -> context`,
        # sync or async; closed at stop when it has `aclose()`.
        self.context = context
        if web_sign_in_scopes is not None:
            from kizuna.kit.oidc_client import web_sign_in

            self.on_start.insert(0, web_sign_in(scopes=web_sign_in_scopes))
        if migrations_dir is None:
            migrations_dir = caller_dir / "migrations"
        self.migrations_dir = migrations_dir

    # ---- command line -------------------------------------------------------------------
    def main(self, argv: Sequence[str] | None = None) -> None:
        """`python -m <service> [serve|migrate|<command>] ...`"""
        parser = argparse.ArgumentParser(prog=f"python -m {self.name}", description=f"Kizuna {self.name} service")
        parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate", *self.commands])
        parser.add_argument("args", nargs=argparse.REMAINDER)
        ns = parser.parse_args(argv)
        settings = self.load_settings()
        configure_logging(self.name, settings.log_level, settings.log_format)
        if ns.command == "serve":
            count = worker_count(settings.kizuna_workers)
            sys.exit(
                run_loop(self.serve(settings), settings.event_loop) if count == 1 else self.supervise(settings, count)
            )
        if ns.command == "migrate":
            self.migrate(settings)
            return
        sys.exit(self.commands[ns.command](settings, ns.args))

    def load_settings(self) -> S:
        """Settings from the environment; the ports default to the declaration's slot."""
        return load_settings(
            self.settings_cls,
            defaults={"http_port": self.declaration.http_port, "grpc_port": self.declaration.grpc_port},
        )

    def migrate(self, settings: S) -> None:
        """Bring this service's database to the newest revision."""
        # Imported here: Alembic (and Mako) cost a serving process ~10 MB it never needs when an
        # init container (or `make up`) migrates first.
        from kizuna.kit import migrations

        migrations.upgrade(settings.database_url_for(self.name), self.migrations_dir)
        log.info("database migrated")

    def supervise(self, settings: S, count: int) -> int:
        """Serve from `count` worker processes sharing the ports (kizuna.kit.workers); returns the
        exit code once they have all stopped."""
        if settings.migrate_on_start:
            self.migrate(settings)

        def serve_worker(http_port: int, grpc_port: int, notify_ready: Callable[[], None]) -> int:
            update = {"http_port": http_port, "grpc_port": grpc_port, "migrate_on_start": False}
            return run_loop(
                self.serve(settings.model_copy(update=update), reuse_port=True, on_ready=lambda _rt: notify_ready()),
                settings.event_loop,
            )

        return Supervisor(
            self.name,
            count=count,
            http=(settings.http_host, settings.http_port),
            grpc=(settings.grpc_host, settings.grpc_port),
            grace_seconds=settings.shutdown_grace_seconds,
            serve_worker=serve_worker,
            report_ports=_report_ports,
        ).run()

    # ---- lifecycle ----------------------------------------------------------------------
    async def serve(
        self,
        settings: S,
        *,
        reuse_port: bool = False,
        on_ready: Callable[[Runtime[S]], None] | None = None,
    ) -> int:
        """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code. Once ready,
        the ports are reported (`KIZUNA_PORTS_FILE`), or `on_ready` is called instead."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Explicit handlers for both, replacing whatever disposition was inherited (a process started
        # in the background has SIGINT ignored).
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with self.running(settings, reuse_port=reuse_port, process_ends=True) as runtime:
            if on_ready is None:
                _report_ports(runtime.http_port, runtime.grpc_port)
            else:
                on_ready(runtime)
            await stop.wait()
            log.info("stop signal received; draining")
        return 0

    @contextlib.asynccontextmanager
    async def running(
        self, settings: S, *, reuse_port: bool = False, process_ends: bool = False
    ) -> AsyncIterator[Runtime[S]]:
        """Start everything, yield the runtime once ready, and shut down gracefully on exit.
        `reuse_port`: the HTTP port is shared with the other workers of a supervisor.
        `process_ends`: the process ends after this (telemetry's providers are shut down with it,
        rather than flushed for a later start in the same process)."""
        configure_telemetry(self.name)
        http_sock = bind_port(settings.http_host, settings.http_port, "http", listen=True, reuse_port=reuse_port)
        runtime: Runtime[S] = Runtime(
            name=self.name,
            settings=settings,
            db=Database(settings.database_url_for(self.name), pool_size=settings.database_pool_size),
            verifier=TokenVerifier(
                settings.kizuna_issuer, settings.kizuna_audience, jwks_url=settings.kizuna_jwks_url or None
            ),
            http_port=http_sock.getsockname()[1],
        )
        if settings.kizuna_client_secret:
            runtime.service_tokens = ServiceTokenClient(
                settings.kizuna_issuer,
                settings.kizuna_client_id or self.name,
                settings.kizuna_client_secret,
                token_endpoint=settings.kizuna_token_url or None,
            )
        app = self.create_app(runtime)
        server = _Uvicorn(
            uvicorn.Config(
                app,
                log_config=None,
                lifespan="off",
                access_log=False,
                # The C HTTP/1.1 parser (llhttp): about a fifth less CPU per small request than the
                # pure-Python h11 (bench/token_bench.py).
                http="httptools",
                timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
                proxy_headers=True,
            )
        )
        http_task = asyncio.create_task(server.serve(sockets=[http_sock]), name="http")
        tasks: list[asyncio.Task[Any]] = []
        workers: list[ConsumerWorker] = []
        grpc_server: GrpcServer | None = None
        try:
            if settings.migrate_on_start:
                await asyncio.to_thread(self.migrate, settings)
            runtime.nc = await self._connect_nats(settings)
            runtime.js = runtime.nc.jetstream()
            await ensure_stream(
                runtime.js,
                self.name,
                replicas=settings.stream_replicas,
                max_age_seconds=settings.stream_max_age_seconds,
                max_bytes=settings.stream_max_bytes,
            )
            runtime.relay = OutboxRelay(
                runtime.db,
                runtime.js,
                source=f"kizuna/{self.name}",
                poll_seconds=settings.outbox_poll_seconds,
                outbox_retention_seconds=settings.outbox_retention_seconds,
                inbox_retention_seconds=settings.inbox_retention_seconds,
            )
            tasks.append(asyncio.create_task(runtime.relay.run(), name="outbox-relay"))
            runtime.revocations = RevocationFeed(runtime.js, runtime.verifier.deny_list)
            await runtime.revocations.start()
            if self.context is not None:
                built = self.context(runtime)
                runtime.context = await built if inspect.isawaitable(built) else built
            for hook in self.on_start:
                await hook(runtime)
            consumers = list(self.consumers(runtime) if callable(self.consumers) else self.consumers)
            if self.privacy is not None:
                consumers.append(erasure_consumer(self.name, self.privacy))
            for consumer in consumers:
                worker = ConsumerWorker(
                    consumer,
                    runtime.db,
                    runtime.js,
                    default_max_deliver=settings.consumer_max_deliver,
                    stream_replicas=settings.stream_replicas,
                    dead_letter_limits=StreamLimits(
                        settings.dead_letter_max_age_seconds,
                        settings.dead_letter_max_bytes,
                        settings.dead_letter_max_msgs,
                    ),
                )
                await worker.subscribe()
                workers.append(worker)
                tasks.append(asyncio.create_task(worker.run(), name=f"consumer:{consumer.name}"))
            for job in self.jobs:
                tasks.append(asyncio.create_task(job(runtime), name=f"job:{getattr(job, '__name__', 'job')}"))
            grpc_server = GrpcServer(
                [(add, factory(runtime)) for add, factory in self.grpc],
                verifier=runtime.verifier if self.verify_tokens else None,
                own_auth=self.grpc_own_auth,
                interceptors=self.grpc_interceptors(runtime) if self.grpc_interceptors else (),
                reuse_port=reuse_port,
            )
            runtime.grpc_port = grpc_server.bind(settings.grpc_host, settings.grpc_port)
            await grpc_server.start()
            while not server.started:
                if http_task.done():
                    await http_task
                    raise RuntimeError("HTTP server stopped during start")
                await asyncio.sleep(0.01)
            runtime.ready = True
            await grpc_server.set_serving(True)
            log.info(
                "ready",
                extra={"http_port": runtime.http_port, "grpc_port": runtime.grpc_port, "url": settings.base_url},
            )
            yield runtime
        finally:
            await self._shutdown(runtime, server, http_task, grpc_server, workers, tasks, process_ends)

    async def _connect_nats(self, settings: S) -> NATS:
        attempt = 0
        while True:
            try:
                return await nats.connect(
                    **natsauth.connect_options(
                        self.name,
                        settings.nats_url,
                        settings.nats_user,
                        settings.nats_password.get_secret_value(),
                        tls_ca_file=settings.nats_tls_ca_file,
                        tls_cert_file=settings.nats_tls_cert_file,
                        tls_key_file=settings.nats_tls_key_file,
                    ),
                    name=self.name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                )
            except (OSError, nats.errors.NoServersError, TimeoutError) as exc:
                attempt += 1
                if attempt >= 30:
                    raise
                log.warning("NATS not reachable yet; retrying", extra={"error": str(exc), "attempt": attempt})
                await asyncio.sleep(1)

    async def _shutdown(
        self,
        runtime: Runtime[S],
        server: _Uvicorn,
        http_task: asyncio.Task[Any],
        grpc_server: GrpcServer | None,
        workers: list[ConsumerWorker],
        tasks: list[asyncio.Task[Any]],
        process_ends: bool,
    ) -> None:
        grace = runtime.settings.shutdown_grace_seconds
        runtime.ready = False
        runtime.stopping = True
        for worker in workers:
            worker.stop()
        server.should_exit = True
        grpc_stop = grpc_server.stop(grace) if grpc_server else asyncio.sleep(0)
        # In-flight HTTP requests, gRPC calls and messages finish side by side.
        await asyncio.gather(
            grpc_stop,
            asyncio.wait_for(asyncio.shield(http_task), grace + 1),
            *(worker.drain() for worker in workers),
            return_exceptions=True,
        )
        for hook in self.on_stop:
            try:
                await hook(runtime)
            except Exception:
                log.exception("on_stop hook failed")
        close_context = getattr(runtime.context, "aclose", None)
        if close_context is not None:
            try:
                await close_context()
            except Exception:
                log.exception("closing the service's context failed")
        if runtime.relay is not None:
            runtime.relay.stop()
        for task in tasks:
            if task.get_name() != "outbox-relay":
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if runtime.relay is not None and runtime.nc is not None and runtime.nc.is_connected:
            try:
                await asyncio.wait_for(runtime.relay.flush(), 3)
            except Exception:
                log.exception("final outbox flush failed; pending events stay for the next start")
        for worker in workers:
            await worker.close()
        if runtime.revocations is not None:
            await runtime.revocations.stop()
        if runtime.nc is not None:
            # Everything published was acknowledged by JetStream and every processed message was
            # acked, so closing loses nothing; drain() would wait on the pull subscriptions.
            with contextlib.suppress(Exception):
                await runtime.nc.flush(timeout=1)
            await runtime.nc.close()
        await runtime.db.dispose()
        await runtime.verifier.aclose()
        if runtime.service_tokens is not None:
            await runtime.service_tokens.aclose()
        # Blocking for at most the exporters' timeouts (EXPORT_TIMEOUT_SECONDS each) when the collector
        # is away.
        shutdown_telemetry(final=process_ends)
        log.info("stopped")

    # ---- HTTP app -----------------------------------------------------------------------
    def create_app(self, runtime: Runtime[S]) -> FastAPI:
        """The FastAPI app: health endpoints, error mapping, tracing, and the service's routes."""
        # FastAPI's built-in telemetry is off: OpenTelemetry's FastAPI instrumentation
        # (instrument_http below) already makes the one SERVER span and duration histogram per
        # request; FastAPI's would add a second span, an operation span, metrics and log records
        # for the same request, and cost about a third of the CPU time of a small request
        # (bench/token_bench.py).
        app = FastAPI(
            title=f"Kizuna {self.name}",
            version="1",
            telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        )
        app.state.runtime = runtime
        app.add_middleware(StartingGate, runtime=runtime)
        # Values no route can store (int64 overflow, NUL, lone surrogates) are refused at the edge.
        app.add_middleware(InputGuard)
        install_validation_errors(app)
        # Outermost: the SERVER span covers every middleware, probes aside.
        instrument_http(app)
        from kizuna.kit.web import PageMiddleware, database_unavailable

        app.add_middleware(PageMiddleware, service=self.name)

        @app.exception_handler(DomainError)
        async def _domain_error(_request: Request, exc: DomainError) -> JSONResponse:
            return JSONResponse(
                {"error": exc.code, "message": exc.message}, status_code=exc.http_status, headers=exc.headers
            )

        for refused in DATABASE_REFUSALS:  # a database refusing connections: 503, not 500
            app.add_exception_handler(refused, database_unavailable)

        @app.get("/healthz", include_in_schema=False)
        async def healthz() -> JSONResponse:
            # Liveness is the process's own state: only what a restart cures counts. A NATS client
            # closed for good (it reconnects for ever otherwise) is that; NATS or the database
            # being down is not (deploy/README.md, "Probes").
            nc = runtime.nc
            if runtime.ready and not runtime.stopping and nc is not None and nc.is_closed:
                return JSONResponse({"status": "broken", "reason": "NATS connection closed"}, status_code=503)
            return JSONResponse({"status": "ok"})

        @app.get("/readyz", include_in_schema=False)
        async def readyz() -> JSONResponse:
            checks = await self._readiness(runtime)
            ok = runtime.ready and not any(v.startswith("error") for v in checks.values())
            body = {"status": "ready" if ok else "not ready", "checks": checks}
            return JSONResponse(body, status_code=200 if ok else 503)

        if self.web_sign_in_scopes is not None:
            from kizuna.kit import header, oidc_client, signout, web

            app.include_router(oidc_client.router)
            app.add_exception_handler(oidc_client.SignInUnavailable, web.sign_in_unavailable)
            app.include_router(signout.router)
            app.include_router(web.router)
            app.include_router(header.router)
        if self.privacy is not None:
            app.include_router(export_router(self.name, self.privacy))
        if self.configure_app:
            self.configure_app(app)
        if self.router is not None:
            app.include_router(self.router)
        return app

    async def _readiness(self, runtime: Runtime[S]) -> dict[str, str]:
        """Whether this pod can serve, check by check (deploy/README.md, "Probes").

        What is the pod's own counts at once: started and not draining, identity's keys fetched
        (without them it verifies no token), the service's own checks. A dependency every pod
        shares does not take this pod out of rotation while it blips: the database counts only
        once it has failed for `readiness_dependency_grace_seconds` (a switchover takes seconds;
        all pods turning not ready together would only trade clear errors for the ingress's),
        NATS never while the client reconnects (no request waits on it: events wait in the
        outbox). Every value is "ok", "error: ..." (counts) or "degraded: ..." (tolerated).
        """
        checks: dict[str, str] = {}
        if runtime.stopping:
            checks["shutdown"] = "stopping"
        elif not runtime.ready:
            checks["startup"] = "starting"
        readiness = list(self.readiness)
        if self.jwks_readiness:
            readiness.insert(0, check_jwks)
        # Side by side, each within 2 s: the answer comes inside the probe's timeout (3 s).
        database, *results = await asyncio.gather(
            _within(runtime.db.ping(), 2), *(_within(check(runtime), 2) for check in readiness)
        )
        grace = runtime.settings.readiness_dependency_grace_seconds
        checks["database"] = self._dependency(runtime, "database", database, grace)
        nc = runtime.nc
        if nc is not None and nc.is_closed and runtime.ready:
            # Closed for good (it reconnects for ever otherwise): this pod's own fault.
            checks["nats"] = "error: connection closed"
        elif nc is not None and nc.is_connected:
            checks["nats"] = self._dependency(runtime, "nats", None, None)
        elif runtime.ready:
            checks["nats"] = self._dependency(runtime, "nats", "not connected", None)
        for check, error in zip(readiness, results, strict=True):
            label = getattr(check, "__name__", "check").removeprefix("check_")
            checks[label] = "ok" if error is None else f"error: {error}"
        return checks

    @staticmethod
    def _dependency(runtime: Runtime[S], name: str, error: str | None, grace: float | None) -> str:
        """A shared dependency's check: "ok"; "degraded: ..." while it has failed for less than
        `grace` seconds (None: for ever); "error: ..." after."""
        now = time.monotonic()
        if error is None:
            runtime.failing_since.pop(name, None)
            return "ok"
        failing = now - runtime.failing_since.setdefault(name, now)
        if grace is not None and failing >= grace:
            return f"error: {error} for {failing:.0f} s"
        limit = "tolerated" if grace is None else f"not ready after {grace:.0f} s"
        return f"degraded: {error} for {failing:.0f} s ({limit})"


async def _within(check: Awaitable[None], seconds: float) -> str | None:
    """None when `check` succeeds within `seconds`, else the name of what it raised."""
    try:
        await asyncio.wait_for(check, seconds)
    except Exception as exc:
        return type(exc).__name__
    return None


class StartingGate:
    """Until the service is ready, every route but the probes answers 503 with Retry-After.

    The HTTP socket is bound first (so a busy port fails fast and probes answer at once), but the
    routes' state (a provider, a client, a cache) only exists once the start hooks have run.
    """

    PROBES = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: Any, runtime: Runtime[Any]) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.runtime.ready or self.runtime.stopping or scope["path"] in self.PROBES:
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "starting", "message": f"{self.runtime.name} is starting; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
        await response(scope, receive, send)


async def check_jwks(runtime: Runtime[Any]) -> None:
    """Identity's signing keys are reachable (fetched once, then cached)."""
    await runtime.verifier.check_reachable()


def context_of(cls: type[C]) -> Callable[[Request], C]:
    """A FastAPI dependency for the running service's context, typed:
    `ShopDep = Annotated[Shop, Depends(context_of(Shop))]`."""

    def dependency(request: Request) -> C:
        runtime: Runtime[Any] = request.app.state.runtime
        return runtime.context_as(cls)

    return dependency

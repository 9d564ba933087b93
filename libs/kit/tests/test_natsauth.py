"""Authenticated NATS: the permissions derived from declarations, enforced by a real nats-server.

Each test connects as an attacker would: a raw client without credentials, with a wrong
password, or with one service's credentials trying what only another service may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sized
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from kizuna.kit import natsauth
from kizuna.kit.db import Database
from kizuna.kit.declaration import Declaration, Earning
from kizuna.kit.devstack import nats_server_binary
from kizuna.kit.events import (
    Consumer,
    ConsumerWorker,
    Event,
    InboxMessage,
    JetStreamNotAnswering,
    UndeclaredConsumer,
    command_sender,
    durable_name,
)
from kizuna.kit.testing import NatsServer, free_port, wait_until
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from sqlmodel import SQLModel, select

DECLARATIONS = [
    Declaration(name="identity", slot=0, label="Identity"),
    Declaration(
        name="points",
        slot=1,
        label="Points",
        consumes=["identity"],
        consumers={"members": "identity", "commands": "points"},
        privacy=True,
    ),
    Declaration(
        name="shop",
        slot=2,
        label="Shop",
        consumes=["identity"],
        publishes=["points.credit.requested"],
        privacy=True,
        earning=Earning(label="Shop", rate_percent=1.0),
    ),
    Declaration(name="travel", slot=3, label="Travel", privacy=True, earning=Earning(label="Travel", rate_percent=1)),
]
BY_NAME = {d.name: d for d in DECLARATIONS}


# ---- what is derived ---------------------------------------------------------------------------


def test_a_service_publishes_its_own_subjects_and_declared_commands_signed_with_its_name() -> None:
    shop = natsauth.permissions(BY_NAME["shop"], DECLARATIONS)
    travel = natsauth.permissions(BY_NAME["travel"], DECLARATIONS)
    assert {"shop.>", "points.credit.requested.shop", "deadletter.shop.>"} <= set(shop["publish"]["allow"])
    assert not {s for s in shop["publish"]["allow"] if s.startswith(("points.", "identity.", "travel."))} - {
        "points.credit.requested.shop"
    }
    # travel does not declare the credit command: it may not send it at all.
    assert not [s for s in travel["publish"]["allow"] if s.startswith("points.")]
    # Everything reaches a service through its own inbox prefix only.
    assert shop["subscribe"]["allow"] == ["_INBOX_shop.>"]


def test_contracts_imply_exactly_the_subjects_they_need() -> None:
    points = natsauth.reads(BY_NAME["points"], DECLARATIONS)
    identity = natsauth.reads(BY_NAME["identity"], DECLARATIONS)
    travel = natsauth.reads(BY_NAME["travel"], DECLARATIONS)
    # points: its own stream and identity's (declared), every earner's purchase events (contract).
    assert points == {
        "points": None,
        "identity": None,
        "shop": ["shop.purchase.>"],
        "travel": ["travel.purchase.>"],
    }
    # identity: completions of erasure from every service that holds member data.
    assert identity == {
        "identity": None,
        "points": ["points.member.erased"],
        "shop": ["shop.member.erased"],
        "travel": ["travel.member.erased"],
    }
    # travel declares no stream: revocation and erasure requests only.
    assert travel == {"travel": None, "identity": ["identity.access.revoked", "identity.member.erasure_requested"]}
    create = natsauth.permissions(BY_NAME["points"], DECLARATIONS)["publish"]["allow"]
    assert "$JS.API.CONSUMER.CREATE.SHOP.points-shop-earn.shop.purchase.>" in create
    assert not [s for s in create if s.startswith("$JS.API.CONSUMER.CREATE.SHOP.") and "purchase" not in s]
    assert not [s for s in create if ".DELETE." in s or s.startswith("$JS.API.STREAM.UPDATE.SHOP")]


def test_each_service_names_exactly_its_own_durable_consumers() -> None:
    """`<service>-<purpose>` from the declaration and the contracts, the same function the
    consumers are built with; no name wildcard but the revocation feed's, which may not take
    another's durable name."""
    assert natsauth.durables(BY_NAME["points"], DECLARATIONS) == {
        "identity": [durable_name("points", "members"), "points-member-erasure"],
        "points": ["points-commands"],
        "shop": ["points-shop-earn"],
        "travel": ["points-travel-earn"],
    }
    assert natsauth.durables(BY_NAME["identity"], DECLARATIONS) == {
        holder: ["identity-erasure-progress"] for holder in ("points", "shop", "travel")
    }
    assert natsauth.durables(BY_NAME["travel"], DECLARATIONS) == {"identity": ["travel-member-erasure"]}
    shop = natsauth.permissions(BY_NAME["shop"], DECLARATIONS)["publish"]
    consumer_api = [s for s in shop["allow"] if s.startswith(("$JS.API.CONSUMER.", "$JS.ACK.", "$JS.FC."))]
    assert consumer_api == [
        "$JS.API.CONSUMER.CREATE.IDENTITY.shop-member-erasure",
        "$JS.API.CONSUMER.CREATE.IDENTITY.shop-member-erasure.>",
        "$JS.API.CONSUMER.INFO.IDENTITY.shop-member-erasure",
        "$JS.API.CONSUMER.MSG.NEXT.IDENTITY.shop-member-erasure",
        "$JS.ACK.IDENTITY.shop-member-erasure.>",
        "$JS.ACK.*.*.IDENTITY.shop-member-erasure.>",
        "$JS.API.CONSUMER.CREATE.IDENTITY.*.identity.access.revoked",
    ]
    assert shop["deny"] == [
        f"$JS.API.CONSUMER.CREATE.IDENTITY.{name}.identity.access.revoked"
        for name in ("points-members", "points-member-erasure", "travel-member-erasure")
    ]


def test_a_declared_consumer_reads_only_a_stream_its_service_reads() -> None:
    from kizuna.kit.declaration import DeclarationError, parse

    base: dict[str, Any] = {"name": "shop", "slot": 2, "events": {"consumes": ["points.ledger.>"]}}
    assert parse({**base, "events": {**base["events"], "consumers": {"ledger": "points"}}}).consumers == {
        "ledger": "points"
    }
    for consumers, message in (
        ({"ledger": "travel"}, "only its own stream or one in consumes"),
        ({"Ledger": "points"}, "not a valid purpose"),
        ({"ledger.all": "points"}, "not a valid purpose"),
        (["ledger"], "must be a table"),
    ):
        with pytest.raises(DeclarationError, match=message):
            parse({**base, "events": {**base["events"], "consumers": consumers}})


def test_the_generated_configuration_is_accepted_by_nats_server(tmp_path: Path) -> None:
    passwords = natsauth.generate_passwords(d.name for d in DECLARATIONS)
    config = natsauth.write_server_config(
        tmp_path / "nats.conf", DECLARATIONS, passwords, port=free_port(), store_dir=tmp_path / "js"
    )
    assert config.stat().st_mode & 0o777 == 0o600
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Quoted `$JS.API…` subjects are not taken for configuration variables.
    assert '"$JS.API.INFO"' in config.read_text()


def test_passwords_are_kept_once_generated(tmp_path: Path) -> None:
    path = tmp_path / "nats-passwords.json"
    first = natsauth.load_or_create_passwords(path, ["shop", "points"])
    again = natsauth.load_or_create_passwords(path, ["shop", "points", "travel"])
    assert again["shop"] == first["shop"] and again["points"] == first["points"]
    assert len({*again.values()}) == 3 and all(len(p) >= 40 for p in again.values())
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_service_connects_as_itself_even_when_the_url_carries_other_credentials() -> None:
    options = natsauth.connect_options("shop", "nats://someone:else@10.0.0.1:4222, nats://[::1]:4223", "shop", "pw")
    assert options == {
        "servers": ["nats://10.0.0.1:4222", "nats://[::1]:4223"],
        "inbox_prefix": "_INBOX_shop",
        "user": "shop",
        "password": "pw",
    }
    assert natsauth.connect_options("demo", "nats://127.0.0.1:4222")["servers"] == ["nats://127.0.0.1:4222"]


def test_a_command_names_its_sender_only_as_the_last_token() -> None:
    def event(subject: str) -> Event:
        return Event("e", subject, "t", "kizuna/travel", None, "", b"", {})

    assert command_sender(event("points.credit.requested.shop"), "points.credit.requested") == "shop"
    assert command_sender(event("points.credit.requested"), "points.credit.requested") is None
    assert command_sender(event("points.credit.requested.shop.x"), "points.credit.requested") is None
    assert command_sender(event("points.spend.requested.shop"), "points.credit.requested") is None
    assert event("shop.purchase.paid").owner == "shop"


# ---- enforced by the server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    started = NatsServer(free_port(), tmp_path_factory.mktemp("nats-auth"), auth=True, declarations=DECLARATIONS)
    try:
        yield started.start()
    finally:
        started.stop()


class Connection:
    """A raw client that records the permission errors the server sends it."""

    nc: Client  # Set by open(), which every connection a test uses has been through.

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def open(self, server: NatsServer, user: str | None) -> Connection:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        options = natsauth.connect_options(user, server.address, user, server.passwords[user]) if user else {}
        self.nc = await nats.connect(
            **(options or {"servers": [server.url]}),
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=2,
        )
        return self

    async def violations(self, count: int) -> list[str]:
        assert self.nc is not None
        await self.nc.flush()
        await wait_until(lambda: _at_least(self.errors, count), timeout=5)
        return self.errors


async def _at_least(items: Sized, count: int) -> bool:
    return len(items) >= count


OpenAs = Callable[[str | None], Awaitable[Connection]]


@pytest.fixture
async def as_service(server: NatsServer) -> AsyncIterator[OpenAs]:
    opened: list[Connection] = []

    async def open_as(user: str | None) -> Connection:
        connection = await Connection().open(server, user)
        opened.append(connection)
        return connection

    yield open_as
    for connection in opened:
        if connection.nc is not None:
            with contextlib.suppress(Exception):
                await connection.nc.close()


@pytest.fixture
async def fresh_streams(server: NatsServer) -> AsyncIterator[Client]:
    """The harness (superuser) creates each service's stream empty."""
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    for d in DECLARATIONS:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(d.stream)
        await js.add_stream(StreamConfig(name=d.stream, subjects=[f"{d.name}.>"]))
    yield nc
    await nc.close()


async def _stream_subjects(nc: Client, stream: str) -> list[str]:
    js = nc.jetstream()
    info = await js.stream_info(stream, subjects_filter=">")
    return sorted((info.state.subjects or {}).keys())


async def test_a_connection_without_or_with_wrong_credentials_is_refused(server: NatsServer) -> None:
    for options in (
        {"servers": [server.address]},
        {"servers": [server.address], "user": "shop", "password": "not-the-password"},
        {"servers": [server.address], "user": "shop", "password": server.passwords["points"]},
    ):
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(**options, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_shop_cannot_request_an_erasure_credit_as_another_service_or_forge_ledger_events(
    as_service: OpenAs, fresh_streams: Client
) -> None:
    shop = await as_service("shop")
    js = shop.nc.jetstream(timeout=1)
    # What shop may do is acknowledged by JetStream.
    await js.publish("shop.purchase.paid", b"ok")
    await js.publish("points.credit.requested.shop", b"ok")
    forged = ["identity.member.erasure_requested", "points.credit.requested.fintech", "points.ledger.credited"]
    for subject in forged:
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.publish(subject, b"forged")
    errors = await shop.violations(len(forged))
    for subject in forged:
        assert any(f'permissions violation for publish to "{subject.lower()}"' in e.lower() for e in errors), errors
    # The streams hold the legitimate messages only.
    assert await _stream_subjects(fresh_streams, "IDENTITY") == []
    assert await _stream_subjects(fresh_streams, "POINTS") == ["points.credit.requested.shop"]
    assert await _stream_subjects(fresh_streams, "SHOP") == ["shop.purchase.paid"]


async def test_shop_cannot_read_another_services_inbox_or_stream_subjects(
    as_service: OpenAs, fresh_streams: Client
) -> None:
    shop = await as_service("shop")
    attempts = ["_INBOX_points.>", "_INBOX.>", "points.>", "identity.>", ">"]
    received: list[str] = []

    async def record(msg: Msg) -> None:
        received.append(msg.subject)

    for subject in attempts:
        await shop.nc.subscribe(subject, cb=record)
    errors = await shop.violations(len(attempts))
    for subject in attempts:
        assert any(f'permissions violation for subscription to "{subject.lower()}"' in e.lower() for e in errors), (
            errors
        )
    # points' replies and events published meanwhile never reach shop.
    points = await as_service("points")
    await points.nc.publish("_INBOX_points.reply", b"secret")
    await points.nc.jetstream(timeout=2).publish("points.ledger.credited", b"x")
    await asyncio.sleep(0.3)
    assert received == []


async def test_shop_cannot_consume_or_tamper_with_streams_it_does_not_read(
    as_service: OpenAs, fresh_streams: Client
) -> None:
    shop = await as_service("shop")
    js = shop.nc.jetstream(timeout=1)
    denied = [
        js.pull_subscribe("points.>", durable="shop-spy", stream="POINTS"),
        js.add_consumer("POINTS", ConsumerConfig(name="shop-spy", durable_name="shop-spy")),
        js.delete_stream("IDENTITY"),
        js.update_stream(StreamConfig(name="IDENTITY", subjects=["identity.>"], max_msgs=1)),
        js.purge_stream("SHOP"),
        js.delete_consumer("IDENTITY", "points-members"),
    ]
    for attempt in denied:
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await attempt
    assert len(await shop.violations(len(denied))) >= len(denied)
    assert (await fresh_streams.jetstream().stream_info("IDENTITY")).config.max_msgs == -1


async def test_points_reads_only_the_purchase_events_of_an_earner(as_service: OpenAs, fresh_streams: Client) -> None:
    shop = await as_service("shop")
    await shop.nc.jetstream().publish("shop.order.noted", b"internal")
    await shop.nc.jetstream().publish("shop.purchase.paid", b"purchase")
    points = await as_service("points")
    js = points.nc.jetstream(timeout=1)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.pull_subscribe("shop.>", durable="points-shop-all", stream="SHOP")
    sub = await js.pull_subscribe(
        "shop.purchase.>",
        durable="points-shop-earn",
        stream="SHOP",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    [msg] = await sub.fetch(1, timeout=2)
    assert (msg.subject, msg.data) == ("shop.purchase.paid", b"purchase")
    await msg.ack_sync()


async def _kit_tables(url: str) -> Database:
    db = Database(url)
    async with db.engine.begin() as conn:
        await conn.run_sync(
            SQLModel.metadata.create_all,
            tables=[SQLModel.metadata.tables["kit_inbox"], SQLModel.metadata.tables["kit_outbox"]],
        )
    return db


async def test_the_kit_consumes_and_dead_letters_under_a_services_own_user(
    server: NatsServer, fresh_streams: Client, tmp_path: Path
) -> None:
    """The kit's consumer worker (stream creation, durable consumer, fetch, ack, nak, dead letter)
    needs nothing beyond what points' user is given."""
    db = await _kit_tables(f"sqlite+aiosqlite:///{tmp_path / 'points.db'}")
    seen: list[tuple[str, str]] = []

    async def handle(_session: object, event: Event) -> None:
        if event.data == b"poison":
            raise ValueError("cannot handle it")
        seen.append((event.owner, event.data.decode()))

    nc = await nats.connect(**natsauth.connect_options("points", server.address, "points", server.passwords["points"]))
    try:
        worker = ConsumerWorker(
            Consumer("points-shop-earn", ["shop.purchase.>"], handle, retry_delay_seconds=0.05),
            db,
            nc.jetstream(),
            default_max_deliver=2,
        )
        await worker.subscribe()
        task = asyncio.create_task(worker.run())
        shop = await nats.connect(**natsauth.connect_options("shop", server.address, "shop", server.passwords["shop"]))
        for body in (b"poison", b"paid-1"):
            await shop.jetstream().publish("shop.purchase.paid", body)
        await shop.close()
        await wait_until(lambda: _at_least(seen, 1), timeout=10)

        async def dead() -> list[str]:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                return await _stream_subjects(fresh_streams, natsauth.DEAD_LETTER_STREAM)
            return []

        assert await wait_until(dead, timeout=10) == ["deadletter.points.points-shop-earn"]
        assert seen == [("shop", "paid-1")]
        worker.stop()
        await task
        await worker.close()
        async with db.sessions() as session:
            assert len((await session.exec(select(InboxMessage))).all()) == 1
    finally:
        await nc.close()
        await db.dispose()


async def test_a_durable_consumer_from_an_older_release_follows_its_new_subjects(
    server: NatsServer, fresh_streams: Client, tmp_path: Path
) -> None:
    """A consumer created with the old subjects is updated in place (under the service's own user),
    instead of silently reading what it no longer should."""
    await fresh_streams.jetstream().add_consumer(
        "SHOP",
        ConsumerConfig(name="points-shop-earn", durable_name="points-shop-earn", filter_subject="shop.order.paid"),
    )
    db = await _kit_tables(f"sqlite+aiosqlite:///{tmp_path / 'points.db'}")
    seen: list[str] = []

    async def handle(_session: object, event: Event) -> None:
        seen.append(event.subject)

    nc = await nats.connect(**natsauth.connect_options("points", server.address, "points", server.passwords["points"]))
    try:
        worker = ConsumerWorker(Consumer("points-shop-earn", ["shop.purchase.>"], handle), db, nc.jetstream())
        await worker.subscribe()
        info = await fresh_streams.jetstream().consumer_info("SHOP", "points-shop-earn")
        assert info.config.filter_subject == "shop.purchase.>"
        js = fresh_streams.jetstream()
        await js.publish("shop.order.paid", b"old")
        await js.publish("shop.purchase.paid", b"new")
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: _at_least(seen, 1), timeout=10)
        worker.stop()
        await task
        await worker.close()
        assert seen == ["shop.purchase.paid"]
    finally:
        await nc.close()
        await db.dispose()


def _certificates(directory: Path) -> dict[str, str]:
    """A private CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key: Any, issuer: str, signer: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("kizuna test CA", ca_key, "kizuna test CA", ca_key, ca=True)
    server = build("nats", server_key, "kizuna test CA", ca_key, ca=False)
    files = {"ca_file": directory / "ca.pem", "cert_file": directory / "server.pem", "key_file": directory / "key.pem"}
    files["ca_file"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert_file"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key_file"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {name: str(path) for name, path in files.items()}


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, dict[str, str], dict[str, str]]]:
    """nats-server with TLS on its client port and the services' users: (port, PEM files, passwords)."""
    from kizuna.kit.testing import end_process, spawn, wait_for_port

    files = _certificates(tmp_path)
    port = free_port()
    passwords = natsauth.generate_passwords(d.name for d in DECLARATIONS)
    config = natsauth.write_server_config(
        tmp_path / "nats.conf",
        DECLARATIONS,
        passwords,
        port=port,
        store_dir=tmp_path / "js",
        tls={"cert_file": files["cert_file"], "key_file": files["key_file"]},
    )
    process = spawn([nats_server_binary(), "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield port, files, passwords
    finally:
        end_process(process)


async def test_a_service_reaches_nats_over_tls_verified_against_its_ca(
    tls_server: tuple[int, dict[str, str], dict[str, str]],
) -> None:
    port, files, passwords = tls_server
    url = f"tls://127.0.0.1:{port}"
    nc = await nats.connect(
        **natsauth.connect_options("shop", url, "shop", passwords["shop"], tls_ca_file=files["ca_file"]),
        allow_reconnect=False,
    )
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="SHOP", subjects=["shop.>"]))
        assert (await js.publish("shop.purchase.paid", b"over tls")).seq == 1
    finally:
        await nc.close()
    # Without the CA the server's certificate is not trusted, and nothing goes in clear text.
    for options in (
        natsauth.connect_options("shop", url, "shop", passwords["shop"]),
        natsauth.connect_options("shop", f"nats://127.0.0.1:{port}", "shop", passwords["shop"]),
    ):
        with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
            await nats.connect(**options, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_a_reader_binds_to_anothers_stream_as_its_owner_made_it(
    server: NatsServer, fresh_streams: Client, tmp_path: Path
) -> None:
    """identity made its stream with its own settings; points (which may not update it) binds to it
    as it is instead of failing or changing it."""
    js = fresh_streams.jetstream()
    await js.update_stream(StreamConfig(name="IDENTITY", subjects=["identity.>"], max_age=3600))
    db = await _kit_tables(f"sqlite+aiosqlite:///{tmp_path / 'points.db'}")

    async def handle(_session: object, _event: Event) -> None:
        return None

    nc = await nats.connect(**natsauth.connect_options("points", server.address, "points", server.passwords["points"]))
    try:
        worker = ConsumerWorker(Consumer("points-members", ["identity.member.registered"], handle), db, nc.jetstream())
        await worker.subscribe()
        await worker.close()
        assert (await js.stream_info("IDENTITY")).config.max_age == 3600
        assert (await js.consumer_info("IDENTITY", "points-members")).config.filter_subject == (
            "identity.member.registered"
        )
    finally:
        await nc.close()
        await db.dispose()


async def test_a_push_consumer_cannot_carry_messages_into_anothers_subject(
    as_service: OpenAs, fresh_streams: Client
) -> None:
    """The one consumer a service creates under a name of its choosing is the revocation feed's, on
    identity's stream, and its deliver subject is in the request body, out of the permissions'
    sight: shop points it at points' command subject, travel's erasure completions and the
    JetStream API. Nothing is delivered, because no service may subscribe there (the streams
    alone are no interest), so identity's message reaches no other stream and no service."""
    points = await as_service("points")
    await points.nc.subscribe("identity.access.revoked")
    assert any("identity.access.revoked" in e for e in await points.violations(1))
    shop = await as_service("shop")
    js = shop.nc.jetstream(timeout=2)
    # (into identity's own subjects the server refuses it: a cycle)
    targets = ("points.credit.requested.fintech", "travel.member.erased", "$JS.API.STREAM.DELETE.POINTS")
    for number, target in enumerate(targets):
        await js.add_consumer(
            "IDENTITY",
            ConsumerConfig(
                name=f"revocations-{number}", deliver_subject=target, filter_subject="identity.access.revoked"
            ),
        )
    identity = await as_service("identity")
    await identity.nc.jetstream(timeout=2).publish("identity.access.revoked", b"revoked")
    await asyncio.sleep(1)
    # (and the JetStream API does not take a delivered message for a request: points' stream stays)
    harness = fresh_streams.jetstream()
    assert (await harness.stream_info("POINTS")).state.messages == 0
    assert (await harness.stream_info("TRAVEL")).state.messages == 0
    assert (await harness.stream_info("IDENTITY")).state.messages == 1


async def test_a_service_cannot_take_look_at_delete_or_recreate_anothers_durable_consumer(
    server: NatsServer, as_service: OpenAs, fresh_streams: Client
) -> None:
    """points and shop both read identity's stream whole. shop cannot fetch from or acknowledge
    points' consumer, look at it, delete it, or re-create it (filtered to what points does not
    read, with a short life) by any of the JetStream API's create forms, while points uses it."""
    points = await as_service("points")
    own = await points.nc.jetstream(timeout=2).pull_subscribe(
        "identity.member.registered", durable="points-members", stream="IDENTITY"
    )
    shop = await as_service("shop")
    victim: dict[str, Any] = {
        "stream_name": "IDENTITY",
        "config": {
            "name": "points-members",
            "durable_name": "points-members",
            "filter_subject": "identity.access.revoked",
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "inactive_threshold": 1_000_000_000,
        },
    }
    in_body_only = {**victim, "config": {k: v for k, v in victim["config"].items() if k != "durable_name"}}
    api = "$JS.API.CONSUMER"
    attempts = {
        f"{api}.MSG.NEXT.IDENTITY.points-members": b'{"batch": 1, "expires": 500000000}',
        f"{api}.INFO.IDENTITY.points-members": b"",
        f"{api}.DELETE.IDENTITY.points-members": b"",
        f"{api}.CREATE.IDENTITY.points-members.identity.access.revoked": json.dumps(victim).encode(),
        f"{api}.CREATE.IDENTITY.points-members": json.dumps(victim).encode(),
        f"{api}.DURABLE.CREATE.IDENTITY.points-members": json.dumps(victim).encode(),
        f"{api}.CREATE.IDENTITY": json.dumps(in_body_only).encode(),
    }
    for subject, body in attempts.items():
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await shop.nc.request(subject, body, timeout=1)
    await shop.nc.publish("$JS.ACK.IDENTITY.points-members.1.1.1.0.0", b"")
    errors = await shop.violations(len(attempts) + 1)
    for subject in [*attempts, "$JS.ACK.IDENTITY.points-members.1.1.1.0.0"]:
        assert any(f'permissions violation for publish to "{subject.lower()}"' in e.lower() for e in errors), subject
    harness = fresh_streams.jetstream()
    info = await harness.consumer_info("IDENTITY", "points-members")
    assert (info.config.filter_subject, info.config.inactive_threshold) == ("identity.member.registered", None)
    # points still reads through it.
    await harness.publish("identity.member.registered", b"member")
    [msg] = await own.fetch(1, timeout=5)
    assert msg.data == b"member"
    await msg.ack_sync()
    # What shop was refused is what the server would do: the form with the name in the body only
    # re-creates points' consumer with another filter and a short life.
    reply = await fresh_streams.request(f"{api}.CREATE.IDENTITY", json.dumps(in_body_only).encode(), timeout=5)
    assert "error" not in json.loads(reply.data), reply.data
    info = await harness.consumer_info("IDENTITY", "points-members")
    assert (info.config.filter_subject, info.config.inactive_threshold) == ("identity.access.revoked", 1.0)


async def test_an_undeclared_consumer_fails_at_start_naming_its_declaration(
    server: NatsServer, fresh_streams: Client, tmp_path: Path
) -> None:
    """The broker lets a service use only the durable consumers its declaration names; one that is
    not declared fails at once, saying what to declare, not with a timeout from the broker."""
    db = await _kit_tables(f"sqlite+aiosqlite:///{tmp_path / 'points.db'}")

    async def handle(_session: object, _event: Event) -> None:
        raise AssertionError("nothing is delivered to an undeclared consumer")

    nc = await nats.connect(**natsauth.connect_options("points", server.address, "points", server.passwords["points"]))
    try:
        worker = ConsumerWorker(Consumer("points-audit", ["shop.purchase.>"], handle), db, nc.jetstream(timeout=1))
        with pytest.raises(UndeclaredConsumer) as refused:
            await worker.subscribe()
        assert "'points-audit'" in str(refused.value)
        assert '[events] consumers = { audit = "shop" }' in str(refused.value)
        declared = ConsumerWorker(Consumer("points-shop-earn", ["shop.purchase.>"], handle), db, nc.jetstream())
        await declared.subscribe()  # the same service, stream and subjects, declared: no error
        await declared.close()
    finally:
        await nc.close()
        await db.dispose()


async def test_a_declared_consumer_on_a_nats_that_does_not_answer_says_so_not_that_it_is_undeclared(
    tmp_path: Path,
) -> None:
    """Silence from a NATS that is stopped (here: its process paused) is not taken for the broker's
    refusal of an undeclared consumer."""
    paused = NatsServer(free_port(), tmp_path / "nats", auth=True, declarations=DECLARATIONS).start()
    db = await _kit_tables(f"sqlite+aiosqlite:///{tmp_path / 'points.db'}")

    async def handle(_session: object, _event: Event) -> None:
        raise AssertionError("nothing is delivered")

    options = natsauth.connect_options("points", paused.address, "points", paused.passwords["points"])
    nc = await nats.connect(**options, allow_reconnect=False)
    try:
        assert paused.process is not None
        paused.process.send_signal(signal.SIGSTOP)
        try:
            declared = ConsumerWorker(
                Consumer("points-shop-earn", ["shop.purchase.>"], handle), db, nc.jetstream(timeout=1)
            )
            with pytest.raises(JetStreamNotAnswering) as silent:
                await declared.subscribe()
            assert "'points-shop-earn'" in str(silent.value) and "down, starting or overloaded" in str(silent.value)
        finally:
            paused.process.send_signal(signal.SIGCONT)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        await db.dispose()
        paused.stop()

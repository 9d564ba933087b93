"""Authenticated NATS: one user per service, with permissions derived from the declarations.

The broker, not a header, says who sent an event: a service may publish only its own subjects
(`<name>.>`) and the commands its declaration lists, each with itself as the last token
(`points.credit.requested.shop`). So a consumer knows the sender from the subject it reads.

What a service's user may do, and nothing else:
- publish its declared subjects (`Declaration.publish_subjects`) and dead letters of its own
  consumers (`deadletter.<name>.>`);
- manage its own stream (`STREAM.CREATE/UPDATE/INFO.<NAME>`), and create (never update or
  delete) the streams it reads and the dead-letter stream, should it start before their owner;
- read the streams it declares in `consumes` (and its own) whole, and only some subjects of others
  where a contract implies it (the filter is then part of the API subject, so the broker checks
  it): every service reads `identity.access.revoked` (revocation) and, when it holds member data,
  `identity.member.erasure_requested`; points reads `<earner>.purchase.>` of every earner;
  identity reads `<service>.member.erased` of every service that holds member data;
- create, look at, fetch from and acknowledge its own durable consumers only, each listed by name
  (`durables`: `<service>-<purpose>`, from its declaration's `[events] consumers` and the
  contracts). Subject wildcards match whole tokens, never a name's prefix, so a `*` in the
  consumer's place would let a service take, acknowledge, or re-create with another filter or a
  short life, another's consumer on a stream both read. No service deletes consumers, and the
  create form that names the consumer only in the body (`CONSUMER.CREATE.<stream>`, out of the
  broker's sight) is never allowed;
- create the revocation feed's ephemeral push consumers (`kizuna.kit.revocation`), one per process
  under a random name, so by `CONSUMER.CREATE.IDENTITY.*.identity.access.revoked`: that `*` is
  the one name wildcard, and every other service's durable name on identity's stream is denied in
  it, so it cannot re-create those;
- receive only on its private inbox prefix `_INBOX_<name>` (replies to its own requests, pulled
  and pushed messages), so no service reads another's replies, and a push consumer pointed at
  another service's subject finds no subscriber to deliver to.

`server_config()` writes a nats-server configuration with these users; `make up` and the kit's
pytest plugin run nats-server with it. A superuser exists only for test harnesses that inspect
streams (`TEST_SUPERUSER`); it is never given to a service.
"""

from __future__ import annotations

import json
import secrets
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kizuna.kit.declaration import ISSUER, LEDGER, Declaration
from kizuna.kit.events import durable_name

# The subjects of the contracts every service (or a named one) reads, beyond its `consumes`.
REVOCATION_SUBJECT = f"{ISSUER}.access.revoked"
ERASURE_REQUESTED_SUBJECT = f"{ISSUER}.member.erasure_requested"
DEAD_LETTER_STREAM = "DEADLETTER"
DEAD_LETTER_PREFIX = "deadletter"
# Only test harnesses use it (to create, read and delete streams); no service ever gets it.
TEST_SUPERUSER = "kizuna-test-superuser"
JS_API = "$JS.API"
# The durable consumers the contracts imply, by purpose (named `<service>-<purpose>`).
ERASURE_PURPOSE = "member-erasure"  # each service holding member data, on identity's stream
ERASURE_PROGRESS_PURPOSE = "erasure-progress"  # identity, on each such service's stream

Permissions = dict[str, dict[str, list[str]]]


def inbox_prefix(service: str) -> str:
    """The private reply prefix of one service: only its own user may subscribe under it."""
    return f"_INBOX_{service}"


def dead_letter_subject(service: str, consumer: str) -> str:
    """Where a consumer's poison messages go; the service's name is a token, so the broker can
    let each service publish only its own consumers' dead letters."""
    return f"{DEAD_LETTER_PREFIX}.{service}.{consumer}"


def reads(decl: Declaration, decls: Iterable[Declaration]) -> dict[str, list[str] | None]:
    """The streams a service reads: owner -> subject filters it may consume (None: all of it)."""
    everyone = list(decls)
    streams: dict[str, list[str] | None] = {decl.name: None}

    def add(owner: str, subject: str) -> None:
        current = streams.setdefault(owner, [])
        if current is not None and subject not in current:
            current.append(subject)

    for read in decl.consumes:
        if "." in read:
            # Only some subjects of another's stream: consumers filtered to exactly those.
            add(read.split(".", 1)[0], read)
        else:
            streams[read] = None

    if decl.name != ISSUER:
        add(ISSUER, REVOCATION_SUBJECT)
        if decl.privacy:
            add(ISSUER, ERASURE_REQUESTED_SUBJECT)
    if decl.name == LEDGER:
        for earner in everyone:
            if earner.earning is not None and earner.name != decl.name:
                add(earner.name, f"{earner.name}.purchase.>")
    if decl.name == ISSUER:
        for holder in everyone:
            if holder.privacy and holder.name != decl.name:
                add(holder.name, f"{holder.name}.member.erased")
    return streams


def earning_purpose(earner: str) -> str:
    """Points' consumer of one earner's purchase events (`points-shop-earn`)."""
    return f"{earner}-earn"


def durables(decl: Declaration, decls: Iterable[Declaration]) -> dict[str, list[str]]:
    """The names of a service's durable consumers, by the stream (its owner's name) each reads:
    those its declaration lists (`[events] consumers`) and those the contracts imply."""
    everyone = list(decls)
    found: dict[str, list[str]] = {}

    def add(owner: str, purpose: str) -> None:
        names = found.setdefault(owner, [])
        if durable_name(decl.name, purpose) not in names:
            names.append(durable_name(decl.name, purpose))

    for purpose, owner in decl.consumers.items():
        add(owner, purpose)
    if decl.privacy:
        add(ISSUER, ERASURE_PURPOSE)
    if decl.name == LEDGER:
        for earner in everyone:
            if earner.earning is not None and earner.name != decl.name:
                add(earner.name, earning_purpose(earner.name))
    if decl.name == ISSUER:
        for holder in everyone:
            if holder.privacy and holder.name != decl.name:
                add(holder.name, ERASURE_PROGRESS_PURPOSE)
    return found


def permissions(decl: Declaration, decls: Iterable[Declaration]) -> Permissions:
    """The nats-server `permissions` of one service's user (publish allow and deny lists, and
    subscribe allow-list)."""
    everyone = list(decls)
    own = decl.stream
    names = durables(decl, everyone)
    publish = [
        *decl.publish_subjects,
        f"{DEAD_LETTER_PREFIX}.{decl.name}.>",
        f"{JS_API}.INFO",
        f"{JS_API}.STREAM.CREATE.{own}",
        f"{JS_API}.STREAM.UPDATE.{own}",
        f"{JS_API}.STREAM.INFO.{own}",
        f"{JS_API}.STREAM.CREATE.{DEAD_LETTER_STREAM}",
        f"{JS_API}.STREAM.INFO.{DEAD_LETTER_STREAM}",
    ]
    readable = reads(decl, everyone)
    for owner, filters in readable.items():
        stream = owner.upper()
        if stream != own:
            publish += [f"{JS_API}.STREAM.CREATE.{stream}", f"{JS_API}.STREAM.INFO.{stream}"]
        for name in names.get(owner, []):
            publish += _consumer_permissions(stream, name, filters)
    unreadable = set(names) - set(readable)
    if unreadable:
        raise ValueError(f"{decl.name}: durable consumers on streams it does not read: {sorted(unreadable)}")
    # The revocation feed (one ephemeral consumer per process, under a random name).
    issuer = ISSUER.upper()
    publish.append(f"{JS_API}.CONSUMER.CREATE.{issuer}.*.{REVOCATION_SUBJECT}")
    deny = [
        f"{JS_API}.CONSUMER.CREATE.{issuer}.{name}.{REVOCATION_SUBJECT}"
        for other in everyone
        if other.name != decl.name
        for name in durables(other, everyone).get(ISSUER, [])
    ]
    # Everything a service receives (replies, pulled and pushed messages) arrives in its own inbox.
    # Nothing else: a subscription elsewhere would also be interest that a push consumer created by
    # another service could deliver that service's own messages to, past its publish permissions.
    subscribe = [f"{inbox_prefix(decl.name)}.>"]
    return {
        "publish": {"allow": _unique(publish), **({"deny": _unique(deny)} if deny else {})},
        "subscribe": {"allow": subscribe},
    }


def _consumer_permissions(stream: str, name: str, filters: list[str] | None) -> list[str]:
    """What the kit's worker does with one durable consumer of its own (nats-py's API subjects)."""
    create = f"{JS_API}.CONSUMER.CREATE.{stream}.{name}"
    return [
        # Created or updated by name; nats-py puts a single filter subject into the subject, so on
        # a stream read only in part the broker checks it.
        *([create, f"{create}.>"] if filters is None else [f"{create}.{subject}" for subject in filters]),
        f"{JS_API}.CONSUMER.INFO.{stream}.{name}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{name}",
        # Acks, naks and terms: `$JS.ACK.<stream>.<consumer>.…` (and the form with domain and account).
        f"$JS.ACK.{stream}.{name}.>",
        f"$JS.ACK.*.*.{stream}.{name}.>",
    ]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def users(
    decls: Iterable[Declaration], passwords: Mapping[str, str], *, superuser_password: str | None = None
) -> list[dict[str, Any]]:
    """The `authorization.users` list: one user per declared service (and the test superuser)."""
    everyone = list(decls)
    entries: list[dict[str, Any]] = []
    for decl in everyone:
        if decl.name not in passwords:
            raise KeyError(f"no NATS password for {decl.name}")
        entries.append(
            {"user": decl.name, "password": passwords[decl.name], "permissions": permissions(decl, everyone)}
        )
    if superuser_password is not None:
        entries.append({"user": TEST_SUPERUSER, "password": superuser_password})
    return entries


def authorization_block(
    decls: Iterable[Declaration], passwords: Mapping[str, str], *, superuser_password: str | None = None
) -> str:
    """The `authorization { users = [...] }` block of a nats-server configuration.

    Strings are written JSON-quoted: nats-server does not expand `$` variables inside quotes,
    so `$JS.API.…` subjects stay literal.
    """
    entries = users(decls, passwords, superuser_password=superuser_password)
    body = ",\n    ".join(json.dumps(entry, sort_keys=True) for entry in entries)
    return f"authorization {{\n  users = [\n    {body}\n  ]\n}}\n"


def server_config(
    decls: Iterable[Declaration],
    passwords: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 4222,
    store_dir: Path | None = None,
    superuser_password: str | None = None,
    tls: Mapping[str, Any] | None = None,
) -> str:
    """A whole single-server configuration: listener, JetStream store, the users, and TLS on the
    client port when `tls` is given (`cert_file`, `key_file`, and `ca_file` + `verify: true` to
    require client certificates)."""
    lines = [f"listen: {json.dumps(f'{host}:{port}')}"]
    if tls:
        lines.append("tls " + json.dumps(dict(tls), sort_keys=True))
    if store_dir is not None:
        lines.append(f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n}}")
    else:
        lines.append("jetstream {}")
    lines.append(authorization_block(decls, passwords, superuser_password=superuser_password))
    return "\n".join(lines)


def generate_passwords(names: Iterable[str], known: Mapping[str, str] | None = None) -> dict[str, str]:
    """A random password per name, keeping the ones already known."""
    result = dict(known or {})
    for name in names:
        result.setdefault(name, secrets.token_urlsafe(32))
    return result


def load_or_create_passwords(path: Path, names: Iterable[str]) -> dict[str, str]:
    """Per-service NATS passwords kept in a 0600 JSON file (like the OAuth client secrets)."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    passwords = generate_passwords(names, known)
    write_private(path, json.dumps(passwords, indent=2))
    return passwords


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (created 0600 before any secret is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def write_server_config(
    path: Path,
    decls: Iterable[Declaration],
    passwords: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 4222,
    store_dir: Path | None = None,
    superuser_password: str | None = None,
    tls: Mapping[str, Any] | None = None,
) -> Path:
    """Write `server_config(...)` to `path` (0600: it holds the passwords)."""
    text = server_config(
        decls, passwords, host=host, port=port, store_dir=store_dir, superuser_password=superuser_password, tls=tls
    )
    write_private(path, text)
    return path


def connect_options(
    service: str,
    url: str,
    user: str = "",
    password: str = "",
    *,
    tls_ca_file: str = "",
    tls_cert_file: str = "",
    tls_key_file: str = "",
) -> dict[str, Any]:
    """`nats.connect` options for a service: its servers, its own user (credentials in the URL are
    dropped then, so a service never connects as anyone else), its private inbox prefix, and TLS
    when a CA (the server's certificate is verified against it, hostname included) or a client
    certificate is given."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    options: dict[str, Any] = {"servers": servers, "inbox_prefix": inbox_prefix(service)}
    if user:
        options["servers"] = [_without_credentials(server) for server in servers]
        options["user"] = user
        options["password"] = password
    if tls_ca_file or tls_cert_file:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls_ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls_cert_file:
            context.load_cert_chain(tls_cert_file, tls_key_file or None)
        options["tls"] = context
    return options


def _without_credentials(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def service_env(service: str, passwords: Mapping[str, str]) -> dict[str, str]:
    """The environment a service connects with: `NATS_USER` and `NATS_PASSWORD`."""
    return {"NATS_USER": service, "NATS_PASSWORD": passwords[service]}


__all__ = [
    "DEAD_LETTER_PREFIX",
    "DEAD_LETTER_STREAM",
    "ERASURE_PROGRESS_PURPOSE",
    "ERASURE_PURPOSE",
    "ERASURE_REQUESTED_SUBJECT",
    "REVOCATION_SUBJECT",
    "TEST_SUPERUSER",
    "authorization_block",
    "connect_options",
    "dead_letter_subject",
    "durables",
    "earning_purpose",
    "generate_passwords",
    "inbox_prefix",
    "load_or_create_passwords",
    "permissions",
    "reads",
    "server_config",
    "service_env",
    "users",
    "write_server_config",
]

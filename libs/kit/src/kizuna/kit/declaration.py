"""A service's declaration: what the platform knows about it, from one data file.

Every service keeps `service.toml` beside its wiring (`services/<name>/src/<name>/service.toml`,
inside the package so it ships in the image). Tooling reads it without importing the service;
everything else is derived from the declarations, never written by hand: `make up`'s list and
ports, identity's client registrations and scope catalogue, the header's links, the NATS users
and their permissions, the Kubernetes manifests and network policies, the lists in tests and
benches.

    name = "shop"
    slot = 2                      # local ports: HTTP 8000 + slot, gRPC 50050 + slot
    label = "Shop"                # the ecosystem header's link text

    [scopes]
    member = { "shop:read" = "See your orders" }      # a member may grant these to an app
    service = {}                                      # only declared services may hold these
    needs = ["points:spend", "fintech:pay"]           # what it asks identity for as a client

    [web]
    sign_in = ["openid", "profile", "shop:read"]      # omit [web]: the service has no pages

    [events]
    publishes = ["points.credit.requested"]           # commands to others; "<name>.>" is implicit
    consumes = ["identity", "points.ledger.>"]        # streams it reads (whole, or only some subjects)
    consumers = { ledger = "points" }                 # its durable consumers (`shop-ledger`) and their stream

    [grpc]
    calls = ["points", "fintech"]

    [privacy]
    holds_member_data = true                          # answers export and erasure

    [earning]                                         # omit: it sells nothing that earns
    label = "Shop"
    rate_percent = 1.0
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

FILE_NAME = "service.toml"
HTTP_BASE_PORT = 8000
GRPC_BASE_PORT = 50050
MAX_SLOT = 99
# The service that owns the points ledger: it reads every earner's purchase events.
LEDGER = "points"
# The identity provider: every service reads its stream (erasure, revocation).
ISSUER = "identity"

_NAME = re.compile(r"^[a-z][a-z0-9]{1,29}$")
_SCOPE = re.compile(r"^[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)?$")
_SUBJECT = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# What a service reads: a whole stream (its owner's name) or only some of its subjects.
_READ = re.compile(r"^[a-z][a-z0-9]{1,29}((\.[a-z][a-z0-9_]*)*\.([a-z][a-z0-9_]*|>))?$")
# What a durable consumer is for: the name is `<service>-<purpose>` (kizuna.kit.events.durable_name).
_PURPOSE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# Scopes identity itself defines for OpenID Connect; a declaration may ask for them, not define them.
OIDC_SCOPES = {
    "openid": "Know who you are (your member ID)",
    "profile": "See your display name",
    "email": "See your email address",
    "offline_access": "Keep access while you are away",
}
# Scopes of the platform itself, held only by identity: it asks every service for a member's data.
PLATFORM_SCOPES = {"privacy:export": "Collect a member's data from every service for their download"}


class DeclarationError(ValueError):
    """A declaration is missing a field or holds a wrong value; the message names the file and field."""


@dataclass(frozen=True)
class Earning:
    label: str
    rate_percent: float

    def as_dict(self, service: str) -> dict[str, Any]:
        return {"service": service, "label": self.label, "rate_percent": self.rate_percent}


@dataclass(frozen=True)
class Declaration:
    name: str
    slot: int
    label: str
    member_scopes: dict[str, str] = field(default_factory=dict)
    service_scopes: dict[str, str] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    sign_in: list[str] | None = None
    publishes: list[str] = field(default_factory=list)
    consumes: list[str] = field(default_factory=list)
    # Its own durable consumers beyond those the contracts imply: purpose -> the stream it reads.
    consumers: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    privacy: bool = False
    earning: Earning | None = None
    path: Path | None = None

    @property
    def http_port(self) -> int:
        return HTTP_BASE_PORT + self.slot

    @property
    def grpc_port(self) -> int:
        return GRPC_BASE_PORT + self.slot

    @property
    def stream(self) -> str:
        return self.name.upper()

    @property
    def publish_subjects(self) -> list[str]:
        """What the broker lets it publish: its own subjects, and each command with itself as the
        last token, so a consumer knows the sender from the subject, never from a header."""
        return [f"{self.name}.>", *(f"{command}.{self.name}" for command in self.publishes)]

    @property
    def client_scopes(self) -> list[str]:
        """Its OAuth client's scopes at identity: what it needs as a service and for its pages."""
        return sorted({*self.needs, *(self.sign_in or [])})

    @property
    def defined_scopes(self) -> dict[str, str]:
        return {**self.member_scopes, **self.service_scopes}


def _fail(where: str, message: str) -> DeclarationError:
    return DeclarationError(f"{where}: {message}")


def _strings(raw: Any, where: str, pattern: re.Pattern[str] | None = None) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise _fail(where, "must be a list of strings")
    if pattern is not None:
        for item in raw:
            if not pattern.match(item):
                raise _fail(where, f"{item!r} is not a valid name")
    return list(raw)


def _scope_table(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _fail(where, "must be a table of scope = description")
    for scope, description in raw.items():
        if not _SCOPE.match(scope):
            raise _fail(where, f"{scope!r} is not a valid scope")
        if not isinstance(description, str) or not description.strip():
            raise _fail(where, f"{scope!r} needs a plain-words description")
    return dict(raw)


def _consumer_table(raw: Any, where: str, name: str, consumes: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _fail(where, "must be a table of purpose = the stream it reads")
    readable = {name, *(read.split(".", 1)[0] for read in consumes)}
    for purpose, stream in raw.items():
        if not _PURPOSE.match(purpose) or len(name) + 1 + len(purpose) > 64:
            raise _fail(where, f"{purpose!r} is not a valid purpose (lower-case words joined by '-')")
        if not isinstance(stream, str) or stream not in readable:
            raise _fail(where, f"{purpose} reads {stream!r}: only its own stream or one in consumes")
    return dict(raw)


def parse(data: dict[str, Any], where: str = "service.toml") -> Declaration:
    """Validate a declaration's data; every error names the file and the field."""
    known = {"name", "slot", "label", "scopes", "web", "events", "grpc", "privacy", "earning"}
    unknown = set(data) - known
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(sorted(unknown))}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(where, "name must be 2-30 lower-case letters and digits, starting with a letter")
    slot = data.get("slot")
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot <= MAX_SLOT:
        raise _fail(where, f"slot must be an integer from 0 to {MAX_SLOT} (ports 8000+slot, 50050+slot)")
    label = data.get("label", name.capitalize())
    if not isinstance(label, str) or not 0 < len(label) <= 40:
        raise _fail(where, "label must be 1-40 characters")
    scopes = data.get("scopes", {})
    member_scopes = _scope_table(scopes.get("member", {}), f"{where} [scopes] member")
    service_scopes = _scope_table(scopes.get("service", {}), f"{where} [scopes] service")
    for scope in {**member_scopes, **service_scopes}:
        if not scope.startswith(f"{name}:"):
            raise _fail(where, f"a service defines only its own scopes ({name}:…), not {scope!r}")
    needs = _strings(scopes.get("needs", []), f"{where} [scopes] needs", _SCOPE)
    web = data.get("web")
    sign_in = None if web is None else _strings(web.get("sign_in", []), f"{where} [web] sign_in", _SCOPE)
    if sign_in is not None and "openid" not in sign_in:
        raise _fail(where, "[web] sign_in must include openid")
    events = data.get("events", {})
    publishes = _strings(events.get("publishes", []), f"{where} [events] publishes", _SUBJECT)
    for command in publishes:
        if command.startswith(f"{name}."):
            raise _fail(where, f"{command!r}: a service's own subjects ({name}.>) need no declaring")
    consumes = _strings(events.get("consumes", []), f"{where} [events] consumes", _READ)
    consumers = _consumer_table(events.get("consumers", {}), f"{where} [events] consumers", name, consumes)
    calls = _strings(data.get("grpc", {}).get("calls", []), f"{where} [grpc] calls", _NAME)
    privacy = data.get("privacy", {}).get("holds_member_data", False)
    if not isinstance(privacy, bool):
        raise _fail(where, "[privacy] holds_member_data must be true or false")
    earning = None
    if "earning" in data:
        raw = data["earning"]
        rate = raw.get("rate_percent", 1.0)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 100:
            raise _fail(where, "[earning] rate_percent must be a number from 0 to 100")
        earn_label = raw.get("label", label)
        if not isinstance(earn_label, str) or not 0 < len(earn_label) <= 40:
            raise _fail(where, "[earning] label must be 1-40 characters")
        earning = Earning(label=earn_label, rate_percent=float(rate))
    return Declaration(
        name=name,
        slot=slot,
        label=label,
        member_scopes=member_scopes,
        service_scopes=service_scopes,
        needs=needs,
        sign_in=sign_in,
        publishes=publishes,
        consumes=consumes,
        consumers=consumers,
        calls=calls,
        privacy=privacy,
        earning=earning,
    )


def load(path: Path) -> Declaration:
    """Read and validate one `service.toml`."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise _fail(str(path), f"not valid TOML: {exc}") from None
    declaration = parse(data, str(path))
    return Declaration(**{**declaration.__dict__, "path": path})


def of_package(package: str) -> Declaration:
    """The declaration shipped inside an installed service package."""
    source = resources.files(package).joinpath(FILE_NAME)
    data = tomllib.loads(source.read_text())
    declaration = parse(data, f"{package}/{FILE_NAME}")
    if declaration.name != package:
        raise _fail(f"{package}/{FILE_NAME}", f"name is {declaration.name!r}, but the package is {package!r}")
    return declaration


def repo_root(start: Path | None = None) -> Path:
    """The workspace root: the nearest folder (from `start` or the working directory) with `services/`."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "services").is_dir() and (candidate / "pyproject.toml").exists():
            return candidate
    raise FileNotFoundError(f"no workspace with a services/ folder at or above {here}")


def discover(root: Path | None = None) -> list[Declaration]:
    """Every service under `<root>/services/*/src/*/service.toml`, ordered by slot, checked as a set."""
    base = repo_root(root)
    found = [load(path) for path in sorted(base.glob(f"services/*/src/*/{FILE_NAME}"))]
    check(found)
    return sorted(found, key=lambda d: d.slot)


def check(declarations: list[Declaration]) -> None:
    """What must hold across services: unique names and slots, known peers and streams, known scopes."""
    names: dict[str, Declaration] = {}
    slots: dict[int, str] = {}
    for d in declarations:
        where = str(d.path or d.name)
        if d.path is not None and d.path.parent.name != d.name:
            raise _fail(where, f"name {d.name!r} must match its package folder {d.path.parent.name!r}")
        if d.name in names:
            raise _fail(where, f"another service is also named {d.name!r}")
        if d.slot in slots:
            raise _fail(where, f"slot {d.slot} is taken by {slots[d.slot]}; pick a free one")
        names[d.name] = d
        slots[d.slot] = d.name
    defined = set(OIDC_SCOPES) | set(PLATFORM_SCOPES)
    for d in declarations:
        defined |= set(d.defined_scopes)
    for d in declarations:
        where = str(d.path or d.name)
        for peer in d.calls:
            if peer not in names:
                raise _fail(where, f"[grpc] calls {peer!r}, which no service declares")
        for read in d.consumes:
            if read.split(".", 1)[0] not in names:
                raise _fail(where, f"[events] consumes {read!r}, but no service declares its stream")
        for command in d.publishes:
            owner = command.split(".", 1)[0]
            if owner not in names:
                raise _fail(where, f"[events] publishes {command!r}, but no service {owner!r} declares it")
        for scope in [*d.needs, *(d.sign_in or [])]:
            if scope not in defined:
                raise _fail(where, f"scope {scope!r} is defined by no service")


def free_slot(declarations: list[Declaration]) -> int:
    """The lowest slot no service holds."""
    taken = {d.slot for d in declarations}
    return next(slot for slot in range(MAX_SLOT + 1) if slot not in taken)


# ---- what the platform derives ----------------------------------------------------------------


def scope_catalogue(declarations: list[Declaration]) -> dict[str, dict[str, Any]]:
    """Identity's `KIZUNA_SCOPES`: every scope any service defines, with its words and who may hold it."""
    catalogue: dict[str, dict[str, Any]] = {
        scope: {"description": text, "member": False, "service": ISSUER} for scope, text in PLATFORM_SCOPES.items()
    }
    for d in declarations:
        for scope, text in d.member_scopes.items():
            catalogue[scope] = {"description": text, "member": True, "service": d.name}
        for scope, text in d.service_scopes.items():
            catalogue[scope] = {"description": text, "member": False, "service": d.name}
    return dict(sorted(catalogue.items()))


def earners(declarations: list[Declaration]) -> list[dict[str, Any]]:
    """Points' `KIZUNA_EARNERS`: every service that earns through the common contract."""
    return [d.earning.as_dict(d.name) for d in declarations if d.earning is not None]


def client_registration(
    d: Declaration, base_url: str, *, first_party: bool = True, internal_url: str | None = None
) -> dict[str, Any]:
    """Identity's client entry for a declared service (in `KIZUNA_CLIENTS`, secret added by the caller).

    `base_url` is where browsers reach the service (redirects after sign-in and sign-out);
    `internal_url`, where identity itself reaches it (its in-cluster Service, e.g.
    `http://shop:8002`): back-channel logout is a call from identity's server, which cannot reach
    the public host. Without it, both are `base_url` (a laptop, where they are the same)."""
    base = base_url.rstrip("/")
    internal = (internal_url or base_url).rstrip("/")
    web = d.sign_in is not None
    return {
        "client_id": d.name,
        "name": d.label,
        "redirect_uris": [f"{base}/auth/callback"] if web else [],
        "post_logout_redirect_uris": [f"{base}/"] if web else [],
        "backchannel_logout_uri": f"{internal}/auth/backchannel-logout" if web else None,
        "grant_types": (["authorization_code", "refresh_token"] if web else []) + ["client_credentials"],
        "scopes": d.client_scopes,
        "first_party": first_party,
    }


def platform_env(declarations: list[Declaration], urls: dict[str, str], addrs: dict[str, str]) -> dict[str, str]:
    """The variables every service gets from the declarations: links, labels, peers' addresses,
    identity's scope catalogue and privacy list, and points' earners."""
    env = {
        "KIZUNA_LINKS": json.dumps({d.name: urls[d.name] for d in declarations}),
        "KIZUNA_LABELS": json.dumps({d.name: d.label for d in declarations}),
        "KIZUNA_SCOPES": json.dumps(scope_catalogue(declarations)),
        "KIZUNA_EARNERS": json.dumps(earners(declarations)),
        "KIZUNA_PRIVACY_SERVICES": json.dumps([d.name for d in declarations if d.privacy]),
    }
    for d in declarations:
        env[f"{d.name.upper()}_ADDR"] = addrs[d.name]
    return env


__all__ = [
    "GRPC_BASE_PORT",
    "HTTP_BASE_PORT",
    "ISSUER",
    "LEDGER",
    "OIDC_SCOPES",
    "PLATFORM_SCOPES",
    "Declaration",
    "DeclarationError",
    "Earning",
    "check",
    "client_registration",
    "discover",
    "earners",
    "free_slot",
    "load",
    "of_package",
    "parse",
    "platform_env",
    "repo_root",
    "scope_catalogue",
]

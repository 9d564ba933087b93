"""Service settings: configuration comes from the environment only."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every Kizuna service has. A service subclasses it to set its ports and add its own.

    Field names map to upper-case environment variables (`nats_url` -> `NATS_URL`).
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    nats_url: str
    # This service's own NATS user (`make up` generates one per service, Kubernetes keeps it in a
    # Secret); the broker enforces what it may publish and read. Empty: none, or in NATS_URL.
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    # TLS to NATS: the CA that signed the server's certificate (verified, hostname included), and a
    # client certificate and key when the server verifies clients. Empty: plain TCP (local runs).
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    kizuna_issuer: str
    kizuna_audience: str = "kizuna"
    kizuna_client_id: str = ""
    kizuna_client_secret: str = ""
    # In-cluster URLs of identity's discovery document, JWKS and token endpoint, when services
    # should not reach them through the public issuer URL (default: discovered from the issuer).
    # Browsers still go to the public authorization and end-session endpoints.
    kizuna_discovery_url: str = ""
    kizuna_jwks_url: str = ""
    kizuna_token_url: str = ""
    # The points service, which every page's header asks for the member's live balance.
    points_addr: str = "127.0.0.1:50051"
    database_url: str = ""
    # PostgreSQL connections per process (and as many again in overflow under bursts).
    database_pool_size: int = 10
    kizuna_data_dir: Path = Path(".data")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50050
    public_url: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    migrate_on_start: bool = True
    # Serving processes (`python -m <service> serve`): 1 serves in the process itself; N > 1 starts
    # a supervisor and N workers sharing the HTTP and gRPC ports (kizuna.kit.workers); 0: one per
    # CPU this process may run on.
    kizuna_workers: int = Field(default=1, ge=0)
    # The event loop each serving process runs on (kizuna.kit.service.run_loop): uvloop serves
    # 5-13% more tokens per CPU second than asyncio's own (bench/README.md, P1).
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    shutdown_grace_seconds: float = 8.0
    outbox_poll_seconds: float = 1.0
    consumer_max_deliver: int = 5
    stream_replicas: int = 1
    # Retention of the service's own stream: events older than this many seconds, or beyond this
    # many bytes, are dropped oldest first (0 / -1: no limit, the local default). Durable consumers
    # must catch up within the age; Kubernetes sets both (deploy/README.md, "Events").
    stream_max_age_seconds: float = 0.0
    stream_max_bytes: int = -1
    # Housekeeping of the event tables (kizuna.kit.events): published outbox rows are deleted after
    # this many seconds, inbox rows (which make a redelivered event a no-op) after this many; 0
    # keeps them. Both outlive the duplicate window, and the inbox outlives the streams' events.
    outbox_retention_seconds: float = 7 * 24 * 3600.0
    inbox_retention_seconds: float = 35 * 24 * 3600.0
    # The DEADLETTER stream's limits, given by whichever consumer creates it (0 / -1: none).
    dead_letter_max_age_seconds: float = 30 * 24 * 3600.0
    dead_letter_max_bytes: int = 1024**3
    dead_letter_max_msgs: int = 100_000
    # How long the database may keep failing before this pod answers /readyz with 503
    # (deploy/README.md, "Probes"); 0: at once.
    readiness_dependency_grace_seconds: float = Field(default=30.0, ge=0)

    @field_validator("outbox_retention_seconds", "inbox_retention_seconds")
    @classmethod
    def _retention_outlives_redeliveries(cls, value: float, info: ValidationInfo) -> float:
        # JetStream's duplicate window (kizuna.kit.events.DUPLICATE_WINDOW_SECONDS).
        if 0 < value <= 120:
            raise ValueError("must be 0 (keep for ever) or longer than JetStream's duplicate window (120 s)")
        max_age = info.data.get("stream_max_age_seconds", 0.0)
        if info.field_name == "inbox_retention_seconds" and 0 < value <= max_age:
            raise ValueError(
                f"must be longer than STREAM_MAX_AGE_SECONDS ({max_age:.0f} s): an event still on its stream"
                " may be delivered again, and only its inbox row makes that a no-op"
            )
        return value

    def database_url_for(self, service: str) -> str:
        """The async SQLAlchemy URL: `DATABASE_URL` when set, else a SQLite file under the data dir."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        self.kizuna_data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{self.kizuna_data_dir / f'{service}.db'}"

    @property
    def base_url(self) -> str:
        """Where a browser reaches this service's pages."""
        return (self.public_url or f"http://127.0.0.1:{self.http_port}").rstrip("/")


def normalize_database_url(url: str) -> str:
    """Map plain `postgresql://` / `sqlite://` URLs onto the async drivers the kit uses."""
    for plain, async_ in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return async_ + url[len(plain) :]
    return url


S = TypeVar("S", bound=ServiceSettings)


class SettingsError(SystemExit):
    """Raised when the environment does not hold a valid configuration; names each bad variable."""


def load_settings(cls: type[S], defaults: dict[str, Any] | None = None) -> S:
    """Read settings from the environment, or exit with a message naming each missing/bad variable.

    `defaults` apply to fields whose variable is not set (the ports a service's declaration gives).
    """
    given = {
        key: value for key, value in (defaults or {}).items() if key.upper() not in os.environ and value is not None
    }
    try:
        return cls(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            if err["type"] == "missing":
                problems.append(f"missing required setting {name} (set the {name} environment variable)")
            else:
                problems.append(f"invalid setting {name}: {err['msg']}")
        message = "configuration error: " + "; ".join(problems)
        print(message, file=sys.stderr)
        raise SettingsError(message) from None

"""identity's settings (environment only). See the service README for what each one means."""

from __future__ import annotations

from kizuna.kit.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    # KIZUNA_AUDIENCE (in the kit's settings) is the `aud` of every access token.
    # Clients registered (upserted) at start: a JSON list of client objects, see clients.py.
    kizuna_clients: str = ""
    # Encrypt signing keys at rest and derive the cookie, CSRF, email-link and device-cookie
    # secrets: versions of 32 bytes base64url, current first, "v2:<key>,v1:<key>" (identity.keys;
    # rotation in the README). Required unless KIZUNA_ISSUER is a loopback http address (local
    # development), where one is generated into KIZUNA_DATA_DIR.
    identity_key_encryption_keys: str = ""
    # The single-key form (read as version v1), for configurations written before versions.
    identity_key_encryption_key: str = ""

    # Argon2id cost (OWASP: m=19 MiB, t=2, p=1). Tests lower these.
    identity_argon2_time_cost: int = 2
    identity_argon2_memory_kib: int = 19456
    identity_argon2_parallelism: int = 1

    identity_access_token_seconds: int = 300
    identity_id_token_seconds: int = 300
    identity_refresh_token_seconds: int = 30 * 24 * 3600
    # Authorization codes are single-use and redeemed within seconds; a longer life only widens
    # the window for a stolen one. More than 60 s fails at start.
    identity_code_seconds: int = Field(default=60, gt=0, le=60)
    identity_session_seconds: int = 14 * 24 * 3600
    # A rotated refresh token stays usable this long, for two tabs refreshing at once.
    identity_refresh_grace_seconds: float = 5.0

    # A new key is published this long before it signs (longer than any verifier's JWKS cache).
    identity_key_publish_seconds: int = 600
    # How often each replica re-reads the keys (a rotation is done by a separate command).
    identity_key_reload_seconds: float = 30.0

    # Sign-in throttling (identity.throttle; the model is in the README): failures within the
    # window allowed per source of an account (known device, usual address, anywhere else) and
    # per address across accounts; after them each attempt waits base * 2^n seconds, at most max.
    identity_signin_window_seconds: int = 24 * 3600
    identity_signin_max_failures_account: int = 5
    identity_signin_max_failures_ip: int = 30
    identity_signin_base_delay_seconds: float = 30.0
    identity_signin_max_delay_seconds: float = 900.0
    identity_signin_usual_address_days: int = 30
    identity_signin_device_days: int = 180
    # Seconds to wait for each back-channel logout delivery; failed ones are retried with
    # exponential backoff (base * 2^n, at most an hour) up to max attempts, checked every poll.
    identity_backchannel_timeout_seconds: float = 3.0
    identity_backchannel_max_attempts: int = 8
    identity_backchannel_retry_base_seconds: float = 2.0
    identity_backchannel_poll_seconds: float = 1.0

    # Every service of the ecosystem: JSON {"shop": "https://shop.example", ...} (make up sets it).
    kizuna_links: str = ""
    # Where identity itself calls each service (a member's data export), when that is not the
    # public URL: in Kubernetes its Service, e.g. {"shop": "http://shop:8002"} (the manifests set
    # it). Empty: KIZUNA_LINKS.
    kizuna_internal_links: str = ""
    # The services that hold member data (export and erasure): a JSON list derived from the
    # declarations (`[privacy] holds_member_data`); make up and the manifests set it. Empty: every
    # service in KIZUNA_LINKS except identity.
    kizuna_privacy_services: str = ""
    # The scopes every declared service defines: JSON {"shop:read": {"description": "...",
    # "member": true, "service": "shop"}, ...}, derived from the declarations (make up, manifests).
    kizuna_scopes: str = ""
    # Seconds to wait for each service's part of a data export.
    identity_export_timeout_seconds: float = 10.0

    # Expired codes, tokens, sessions and old sign-in attempts are deleted this often (every
    # replica may run it: deletes of expired rows are idempotent), keeping this much history.
    identity_cleanup_seconds: float = 600.0
    identity_cleanup_keep_seconds: int = 7 * 24 * 3600

    # Where verification emails are written (a local mail drop); empty: KIZUNA_DATA_DIR/mail.
    identity_mail_dir: str = ""

"""Outgoing HTTP clients: one TLS context per process for all of them.

httpx builds a new verifying TLS context for every client it creates, loading and parsing the CA
bundle each time: about 40 ms of CPU per client, even for a client that only ever speaks plain
HTTP. A service creates several clients as it starts (token verification, its token client,
sign-in), a test run thousands, and a client per request (`httpx.get`) pays it on every call.
The context here is built once, with the settings httpx would use (certifi's bundle, or
SSL_CERT_FILE / SSL_CERT_DIR from the environment), and shared: contexts are safe to share
between clients and threads once built.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's verifying TLS context for outgoing HTTPS (built on first use)."""
    return httpx.create_ssl_context(trust_env=True)


def async_client(**options: Any) -> httpx.AsyncClient:
    """`httpx.AsyncClient(**options)` verifying with the shared TLS context."""
    return httpx.AsyncClient(verify=tls_context(), **options)


def client(**options: Any) -> httpx.Client:
    """`httpx.Client(**options)` verifying with the shared TLS context."""
    return httpx.Client(verify=tls_context(), **options)

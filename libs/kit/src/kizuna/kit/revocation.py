"""Revocation felt everywhere: identity's `identity.access.revoked` events feed the verifier's
deny-list in every service.

Access tokens are verified locally, so without this a token revoked at identity would be accepted
elsewhere until it expires. Each process runs one `RevocationFeed`: an ephemeral JetStream push consumer
on identity's stream, filtered to the revocation subject, that starts `lookback_seconds` in the
past, so a process that starts (a new pod, a restart) learns the
revocations whose tokens may still be alive. Nothing is stored: the deny-list is in memory and
each entry is dropped when the tokens it names would have expired anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from kizuna.identity.v1 import events_pb2
from kizuna.kit.auth import DenyList
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

log = logging.getLogger("kizuna.kit.revocation")

REVOCATION_SUBJECT = "identity.access.revoked"
IDENTITY_STREAM = "IDENTITY"
# Longer than any access token lives (identity issues them for 5 minutes by default).
DEFAULT_LOOKBACK_SECONDS = 900.0
# The server removes the consumer this long after its subscriber went away (a process that died).
INACTIVE_THRESHOLD_SECONDS = 60.0


def apply(deny_list: DenyList, event: events_pb2.AccessRevoked, *, lookback_seconds: float) -> list[str]:
    """Add what `event` revokes to `deny_list`; returns the keys added."""
    revoked_at = event.revoked_at.ToDatetime(tzinfo=UTC).timestamp() if event.HasField("revoked_at") else time.time()
    if event.HasField("expires_at"):
        expires_at = event.expires_at.ToDatetime(tzinfo=UTC).timestamp()
    else:
        expires_at = revoked_at + lookback_seconds
    keys = []
    for kind, value in (("grant", event.grant_id), ("sid", event.session_id), ("jti", event.jti)):
        if value:
            deny_list.add(f"{kind}:{value}", expires_at=expires_at)
            keys.append(f"{kind}:{value}")
    if event.member_wide and event.member_id:
        # Tokens issued in the same second as the revocation are refused too (iat has 1 s
        # resolution): a member signing in again that second retries once.
        deny_list.add(f"member:{event.member_id}", expires_at=expires_at, issued_up_to=revoked_at)
        keys.append(f"member:{event.member_id}")
    if event.client_wide and event.client_id:
        deny_list.add(f"client:{event.client_id}", expires_at=expires_at, issued_up_to=revoked_at)
        keys.append(f"client:{event.client_id}")
    return keys


class RevocationFeed:
    """Keeps `deny_list` up to date with identity's revocation events."""

    def __init__(
        self,
        js: JetStreamContext,
        deny_list: DenyList,
        *,
        lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
        retry_seconds: float = 1.0,
        catch_up_seconds: float = 5.0,
    ) -> None:
        self.js = js
        self.deny_list = deny_list
        self.lookback = lookback_seconds
        self.retry = retry_seconds
        self.catch_up = catch_up_seconds
        self.applied = 0  # revocation events received (decodable or not)
        # How many past revocations the consumer had to deliver when it was created.
        self.backlog = 0
        self._caught_up = asyncio.Event()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        """Subscribe now if identity's stream exists, else keep trying in the background (until
        the stream exists there is nothing to revoke). Returns once the revocations of the last
        `lookback_seconds` are in the deny-list (or after `catch_up_seconds`, with a warning), so
        a process that starts does not serve a token revoked before it started."""
        if not await self._try_subscribe():
            self._task = asyncio.create_task(self._keep_trying(), name="revocation-feed")
            return
        try:
            await asyncio.wait_for(self._caught_up.wait(), self.catch_up)
        except TimeoutError:
            log.warning(
                "revocation feed still catching up; serving meanwhile",
                extra={"applied": self.applied, "backlog": self.backlog},
            )

    async def _try_subscribe(self) -> bool:
        # An ephemeral push consumer, named so that the broker can allow exactly this filter
        # (`$JS.API.CONSUMER.CREATE.IDENTITY.<name>.identity.access.revoked`), delivering into
        # this connection's own inbox; no acks (a redelivered revocation changes nothing), and
        # the server drops it once this process has gone.
        nc = self.js._nc
        deliver = nc.new_inbox()
        sub = await nc.subscribe(deliver, cb=self._on_message)
        start = datetime.now(UTC) - timedelta(seconds=self.lookback)
        config = ConsumerConfig(
            name=f"revocations-{uuid.uuid4().hex[:16]}",
            deliver_subject=deliver,
            filter_subject=REVOCATION_SUBJECT,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_THRESHOLD_SECONDS,
            mem_storage=True,
            num_replicas=1,
        )
        try:
            info = await self.js.add_consumer(IDENTITY_STREAM, config)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            await sub.unsubscribe()
            log.info("revocation feed waiting for identity's stream", extra={"error": type(exc).__name__})
            return False
        self._sub = sub
        self.backlog = int(info.num_pending or 0)
        if self.applied >= self.backlog:
            self._caught_up.set()
        return True

    async def _keep_trying(self) -> None:
        while True:
            await asyncio.sleep(self.retry)
            if await self._try_subscribe():
                return

    async def _on_message(self, msg: Msg) -> None:
        self.applied += 1
        if self._sub is not None and self.applied >= self.backlog:
            self._caught_up.set()
        event = events_pb2.AccessRevoked()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            log.error("undecodable revocation event ignored", extra={"subject": msg.subject})
            return
        apply(self.deny_list, event, lookback_seconds=self.lookback)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        sub = self._sub
        self._sub = None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError) as exc:
                log.info("revocation feed already closed", extra={"error": type(exc).__name__})

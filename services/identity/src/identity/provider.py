"""The Provider: what every identity route needs (settings, database, keys, clock, passwords,
cookies), and the storage operations behind the OAuth/OIDC rules: codes are single-use, a replayed
code revokes its grant, refresh tokens rotate, reuse of a rotated one revokes its grant."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from kizuna.kit import outbound
from kizuna.kit.db import Database, utcnow
from sqlmodel import col, select, update

from identity import members
from identity.clients import Client, ScopeCatalogue
from identity.email_verification import EmailVerifier, MailDrop
from identity.keys import KeyRing, load_key_encryption_keys
from identity.passwords import Passwords
from identity.sessions import OpSession, SessionCookie, SignInCounter
from identity.settings import Settings
from identity.tokens import (
    AccessToken,
    AuthorizationCode,
    Grant,
    Issuer,
    RefreshToken,
    TokenRecord,
    hash_token,
    new_grant_id,
    publish_revocation,
    revoke_grant,
    unverified_claims,
)

log = logging.getLogger("identity")
T = TypeVar("T")
CLIENT_CACHE_SECONDS = 5.0
# Unknown client ids are cached too (a flood of one wrong id costs no database reads), so the cache
# is bounded: a flood of random ids must not grow it without end.
CLIENT_CACHE_ENTRIES = 4096


class Provider:
    def __init__(self, settings: Settings, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.db = db
        self._clock = clock
        self.issuer_url = settings.kizuna_issuer.rstrip("/")
        self.scopes = ScopeCatalogue.from_json(settings.kizuna_scopes)
        kek = load_key_encryption_keys(
            settings.identity_key_encryption_keys,
            settings.identity_key_encryption_key,
            self.issuer_url,
            settings.kizuna_data_dir,
        )
        self.keys = KeyRing(db, kek, self.now)
        self.issuer = Issuer(self.issuer_url, settings.kizuna_audience, self.keys)
        self.passwords = Passwords(
            settings.identity_argon2_time_cost,
            settings.identity_argon2_memory_kib,
            settings.identity_argon2_parallelism,
        )
        # Derived secrets: made with the current key-encryption key version, checked against every one.
        self.cookie = SessionCookie(kek.secrets("session-cookie"))
        self.csrf_secrets = kek.secrets("csrf")
        self.csrf_secret = self.csrf_secrets[0]
        mail_dir = Path(settings.identity_mail_dir) if settings.identity_mail_dir else settings.kizuna_data_dir / "mail"
        self.email = EmailVerifier(kek.secrets("email-verification"), self.issuer_url, MailDrop(mail_dir))
        self.secure_cookies = self.issuer_url.startswith("https://")
        self.sign_ins = SignInCounter()
        self.loop: asyncio.AbstractEventLoop | None = None
        # Authlib's server is synchronous; it runs in these threads and calls back into the loop.
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="oauth")
        self.http = outbound.async_client(timeout=settings.identity_backchannel_timeout_seconds)
        self._clients: dict[str, tuple[float, Client | None]] = {}
        self._client_reads: dict[str, asyncio.Future[Client | None]] = {}
        self.client_cache_entries = CLIENT_CACHE_ENTRIES

    # ---- time and the sync bridge ---------------------------------------------------------
    def now(self) -> datetime:
        return self._clock()

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        """Tests move time; the key ring follows."""
        self._clock = clock

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        self.loop = asyncio.get_running_loop()
        return await self.loop.run_in_executor(self.executor, fn, *args)

    def sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the service loop from an Authlib worker thread and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def close(self) -> None:
        await self.http.aclose()
        self.executor.shutdown(wait=False)

    # ---- clients and members --------------------------------------------------------------
    def cached_client(self, client_id: str) -> tuple[bool, Client | None]:
        """(True, the client or None when unknown) from the cache, else (False, None): the token
        endpoint's way to skip an await per request. Once an entry is past its time, the first
        request rereads it (`client`) and the others answer from the old entry while that read is
        under way: at the moment an entry expired, every request in flight used to read the client
        itself (on SQLite each waiting for the write lock its transaction takes), stalling the
        endpoint for seconds (bench/token_bench.py)."""
        cached = self._clients.get(client_id)
        if cached is None:
            return False, None
        now = time.monotonic()
        if cached[0] > now or (client_id in self._client_reads and cached[0] + CLIENT_CACHE_SECONDS > now):
            return True, cached[1]
        return False, None

    async def client(self, client_id: str) -> Client | None:
        # Clients change rarely (start-up config, admin command); a few seconds of caching takes a
        # database round trip off every token request.
        fresh, client = self.cached_client(client_id)
        if fresh:
            return client
        # One read per client at a time, however many requests wait for it.
        reading = self._client_reads.get(client_id) or self._read_client(client_id)
        return await asyncio.shield(reading)

    def _read_client(self, client_id: str) -> asyncio.Future[Client | None]:
        async def read() -> Client | None:
            async with self.db.sessions() as session:
                client = await session.get(Client, client_id)
            if self._client_reads.get(client_id) is task:  # not forgotten meanwhile
                self._keep_client(client_id, client)
            return client

        task = asyncio.ensure_future(read())
        self._client_reads[client_id] = task

        def done(finished: asyncio.Future[Client | None]) -> None:
            if self._client_reads.get(client_id) is finished:
                del self._client_reads[client_id]
            error = None if finished.cancelled() else finished.exception()
            if error is not None:
                log.warning("reading a client failed", extra={"client_id": client_id, "error": str(error)})

        task.add_done_callback(done)
        return task

    def _keep_client(self, client_id: str, client: Client | None) -> None:
        now = time.monotonic()
        limit = self.client_cache_entries
        if client_id not in self._clients and len(self._clients) >= limit:
            for key in [key for key, (until, _) in self._clients.items() if until <= now]:
                del self._clients[key]
            # Still full of live entries: the oldest quarter goes (dicts keep insertion order).
            if len(self._clients) >= limit:
                for key in list(self._clients)[: max(1, limit // 4)]:
                    del self._clients[key]
        self._clients[client_id] = (now + CLIENT_CACHE_SECONDS, client)

    def forget_client(self, client_id: str) -> None:
        """After a change through this replica (others see it within CLIENT_CACHE_SECONDS)."""
        self._clients.pop(client_id, None)
        # A read under way may have read the client before the change: its result is not kept.
        self._client_reads.pop(client_id, None)

    async def member(self, member_id: str | None) -> members.Member | None:
        if not member_id:
            return None
        async with self.db.sessions() as session:
            member = await session.get(members.Member, member_id)
        return member if member is not None and member.status == members.ACTIVE else None

    async def op_session(self, sid: str | None) -> OpSession | None:
        if not sid:
            return None
        async with self.db.sessions() as session:
            op = await session.get(OpSession, sid)
        return op if op is not None and op.live(self.now()) else None

    # ---- codes ----------------------------------------------------------------------------
    async def save_code(self, code: str, request: Any) -> None:
        now = self.now()
        op: OpSession = request.op_session
        data = request.payload.data
        async with self.db.transaction() as session:
            grant = Grant(
                id=new_grant_id(),
                client_id=request.client.id,
                member_id=request.user.id,
                session_id=op.id,
                scope=request.scope or "",
                auth_time=op.auth_time,
                created_at=now,
            )
            session.add(grant)
            session.add(
                AuthorizationCode(
                    code_hash=hash_token(code),
                    grant_id=grant.id,
                    client_id=request.client.id,
                    member_id=request.user.id,
                    redirect_uri=request.payload.redirect_uri,
                    scope=grant.scope,
                    nonce=data.get("nonce"),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method") or None,
                    session_id=op.id,
                    auth_time=op.auth_time,
                    expires_at=now + timedelta(seconds=self.settings.identity_code_seconds),
                )
            )

    async def consume_code(self, code: str, client: Client) -> AuthorizationCode | None:
        """The code if it is valid for `client`, marked used. A second use revokes the grant."""
        now = self.now()
        async with self.db.transaction() as session:
            row = await session.get(AuthorizationCode, hash_token(code))
            if row is None or row.client_id != client.id:
                return None
            if row.used_at is not None:
                log.warning("authorization code replayed; revoking its grant", extra={"client_id": client.id})
                await revoke_grant(session, row.grant_id, now)
                return None
            if row.expires_at <= now:
                return None
            result = await session.exec(
                update(AuthorizationCode)
                .where(col(AuthorizationCode.code_hash) == row.code_hash, col(AuthorizationCode.used_at).is_(None))
                .values(used_at=now)
            )
            if result.rowcount != 1:
                await revoke_grant(session, row.grant_id, now)
                return None
            grant = await session.get(Grant, row.grant_id)
            if grant is None or grant.revoked_at is not None:
                return None
            return row

    # ---- tokens ---------------------------------------------------------------------------
    def generate_token(
        self,
        grant_type: str,
        client: Client,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
        *,
        grant_id: str | None = None,
        sid: str | None = None,
    ) -> dict[str, Any]:
        """A token response. A member's access token names its grant (`grant_id`) and the sign-in
        session it descends from (`sid`), so that every service can refuse it once either is
        revoked (kizuna.kit.revocation)."""
        lifetime = self.settings.identity_access_token_seconds
        subject = user.id if user is not None else client.id
        binding = {}
        if grant_id:
            binding["grant_id"] = grant_id
        if sid:
            binding["sid"] = sid
        access, _jti, _exp = self.issuer.access_token(
            subject=subject, client_id=client.id, scope=scope or "", lifetime=lifetime, now=self.now(), extra=binding
        )
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": lifetime,
            "scope": scope or "",
        }
        if include_refresh_token and user is not None:
            from identity.tokens import new_opaque

            token["refresh_token"] = new_opaque()
        return token

    async def save_token(self, token: dict[str, Any], request: Any) -> None:
        now = self.now()
        claims = unverified_claims(token["access_token"])
        grant_id = None
        parent = None
        if request.authorization_code is not None:
            grant_id = request.authorization_code.grant_id
        elif request.refresh_token is not None:
            grant_id = request.refresh_token.grant_id
            parent = request.refresh_token.token_hash
        async with self.db.transaction() as session:
            session.add(
                AccessToken(
                    jti=claims["jti"],
                    grant_id=grant_id,
                    client_id=claims["client_id"],
                    subject=claims["sub"],
                    scope=claims.get("scope", ""),
                    issued_at=now,
                    expires_at=datetime.fromtimestamp(claims["exp"], now.tzinfo),
                )
            )
            if token.get("refresh_token") and grant_id is not None:
                session.add(
                    RefreshToken(
                        token_hash=hash_token(token["refresh_token"]),
                        grant_id=grant_id,
                        client_id=claims["client_id"],
                        scope=token.get("scope", ""),
                        created_at=now,
                        expires_at=now + timedelta(seconds=self.settings.identity_refresh_token_seconds),
                        parent_hash=parent,
                    )
                )

    async def use_refresh_token(self, value: str) -> RefreshToken | None:
        """The refresh token if it may be used now. Reusing a rotated one revokes the whole grant,
        except the immediately previous token, once, within a few seconds of its rotation (two
        tabs refreshing at once): at most one extra child per token, so a stolen previous token
        cannot mint tokens without limit inside the window."""
        now = self.now()
        async with self.db.transaction() as session:
            row = await session.get(RefreshToken, hash_token(value))
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return None
            grant = await session.get(Grant, row.grant_id)
            if grant is None or grant.revoked_at is not None:
                return None
            if row.rotated_at is None:
                return row
            children = (
                await session.exec(select(RefreshToken).where(RefreshToken.parent_hash == row.token_hash))
            ).all()
            grace = timedelta(seconds=self.settings.identity_refresh_grace_seconds)
            if (
                now - row.rotated_at <= grace
                and len(children) == 1
                and children[0].rotated_at is None
                and children[0].revoked_at is None
            ):
                # Claimed conditionally: of two simultaneous reuses only one gets the extra child.
                claimed = await session.exec(
                    update(RefreshToken)
                    .where(col(RefreshToken.token_hash) == row.token_hash, col(RefreshToken.grace_used_at).is_(None))
                    .values(grace_used_at=now)
                )
                if claimed.rowcount == 1:
                    return row
            log.warning("rotated refresh token reused; revoking its grant", extra={"client_id": row.client_id})
            await revoke_grant(session, row.grant_id, now)
            return None

    async def rotate_refresh_token(self, row: RefreshToken) -> None:
        async with self.db.transaction() as session:
            await session.exec(
                update(RefreshToken)
                .where(col(RefreshToken.token_hash) == row.token_hash, col(RefreshToken.rotated_at).is_(None))
                .values(rotated_at=self.now())
            )

    async def grant(self, grant_id: str) -> Grant | None:
        async with self.db.sessions() as session:
            return await session.get(Grant, grant_id)

    async def grant_member(self, grant_id: str) -> members.Member | None:
        async with self.db.sessions() as session:
            grant = await session.get(Grant, grant_id)
        if grant is None or grant.revoked_at is not None:
            return None
        return await self.member(grant.member_id)

    async def find_token(self, value: str, hint: str | None = None) -> TokenRecord | None:
        """An access token (JWT, by its jti) or a refresh token (by its hash), as introspection sees it."""
        now = self.now()
        async with self.db.sessions() as session:
            if value.count(".") == 2:
                try:
                    claims = self.issuer.verify(value, typ="at+jwt", now=now, check_exp=False)
                except ValueError:
                    return None
                row = await session.get(AccessToken, claims.get("jti", ""))
                if row is None:
                    if not _service_token(claims):
                        return None
                    # Service tokens are not recorded (see oauth_server.service_token): live until exp.
                    expires = datetime.fromtimestamp(int(claims["exp"]), now.tzinfo)
                    return TokenRecord(
                        "access_token",
                        str(claims["client_id"]),
                        str(claims.get("scope", "")),
                        expires,
                        False,
                        now,
                        claims,
                        str(claims["jti"]),
                        None,
                    )
                revoked = row.revoked_at is not None or await _grant_revoked(session, row.grant_id)
                return TokenRecord(
                    "access_token",
                    row.client_id,
                    row.scope,
                    row.expires_at,
                    revoked,
                    now,
                    claims,
                    row.jti,
                    row.grant_id,
                )
            rt = await session.get(RefreshToken, hash_token(value))
            if rt is None:
                return None
            revoked = (
                rt.revoked_at is not None or rt.rotated_at is not None or await _grant_revoked(session, rt.grant_id)
            )
            grant = await session.get(Grant, rt.grant_id)
            claims = {"sub": grant.member_id if grant else None, "client_id": rt.client_id, "iss": self.issuer_url}
            return TokenRecord(
                "refresh_token", rt.client_id, rt.scope, rt.expires_at, revoked, now, claims, rt.token_hash, rt.grant_id
            )

    async def revoke(self, record: TokenRecord) -> None:
        """Revoking a refresh token ends its grant (RFC 7009 §2.1); an access token ends alone."""
        now = self.now()
        async with self.db.transaction() as session:
            if record.kind == "refresh_token" and record.grant_id:
                await revoke_grant(session, record.grant_id, now)
            else:
                result = await session.exec(
                    update(AccessToken).where(col(AccessToken.jti) == record.key).values(revoked_at=now)
                )
                member = str(record.claims.get("sub", ""))
                await publish_revocation(
                    session, now, reason="token", jti=record.key, member_id=member if member.startswith("mbr_") else ""
                )
                if result.rowcount == 0:  # an unrecorded service token: deny-list it until it expires
                    session.add(
                        AccessToken(
                            jti=record.key,
                            grant_id=None,
                            client_id=record.client_id,
                            subject=str(record.claims.get("sub", record.client_id)),
                            scope=record.scope,
                            issued_at=now,
                            expires_at=record.expires_at,
                            revoked_at=now,
                        )
                    )

    async def access_token_live(self, claims: dict[str, Any]) -> bool:
        async with self.db.sessions() as session:
            row = await session.get(AccessToken, str(claims.get("jti", "")))
            if row is None:
                return _service_token(claims)
            if row.revoked_at is not None:
                return False
            return not await _grant_revoked(session, row.grant_id)


def _service_token(claims: dict[str, Any]) -> bool:
    """A client-credentials token (`sub` is the client): not recorded at issue."""
    return (
        bool(claims.get("jti")) and claims.get("sub") == claims.get("client_id") and isinstance(claims.get("exp"), int)
    )


async def _grant_revoked(session: Any, grant_id: str | None) -> bool:
    if grant_id is None:
        return False
    grant = await session.get(Grant, grant_id)
    return grant is None or grant.revoked_at is not None


Job = Callable[[Any], Awaitable[None]]

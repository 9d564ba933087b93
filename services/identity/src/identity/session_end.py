"""Ending member sessions at identity: the sessions end, their grants are revoked and every client
that took part hears of it through back-channel logout (a signed logout token POSTed to it).

Used by the sign-out pages, the account center (password change, "sign out everywhere") and
account deletion alike, so it depends on none of them.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from identity import backchannel
from identity.clients import Client
from identity.provider import Provider
from identity.sessions import OpSession
from identity.tokens import Grant, revoke_grant


async def end_sessions_in(session: AsyncSession, sids: list[str], now: datetime) -> list[str]:
    """In the caller's transaction: end these sessions, revoke their grants (except offline_access
    ones) and record a back-channel logout for every client that took part; returns the deliveries."""
    notices: set[tuple[str, str, str]] = set()  # (client_id, member_id, sid)
    for sid in sids:
        op = await session.get(OpSession, sid)
        if op is None or op.ended_at is not None:
            continue
        op.ended_at = now
        session.add(op)
        grants = (await session.exec(select(Grant).where(Grant.session_id == sid))).all()
        for grant in grants:
            notices.add((grant.client_id, op.member_id, sid))
            if grant.revoked_at is None and "offline_access" not in grant.scope.split():
                await revoke_grant(session, grant.id, now)
    return await _stage_for_clients(session, sorted(notices), now)


async def _stage_for_clients(
    session: AsyncSession, notices: list[tuple[str, str, str | None]], now: datetime
) -> list[str]:
    client_ids = sorted({c for c, _, _ in notices})
    with_uri = {
        c.id
        for c in (await session.exec(select(Client).where(col(Client.id).in_(client_ids)))).all()
        if c.backchannel_logout_uri
    }
    return [
        backchannel.stage(session, client_id=client_id, member_id=member_id, sid=sid, now=now)
        for client_id, member_id, sid in notices
        if client_id in with_uri
    ]


async def end_member_everywhere(session: AsyncSession, member_id: str, now: datetime) -> list[str]:
    """In the caller's transaction: end every session of the member, revoke every grant (offline
    ones too) and record a back-channel logout for every client the member ever authorized."""
    live = (
        await session.exec(select(OpSession).where(OpSession.member_id == member_id, col(OpSession.ended_at).is_(None)))
    ).all()
    staged = await end_sessions_in(session, [op.id for op in live], now)
    grants = (await session.exec(select(Grant).where(Grant.member_id == member_id))).all()
    for grant in grants:
        if grant.revoked_at is None:
            await revoke_grant(session, grant.id, now)
    # Without `sid`: the client ends every local session of this member.
    clients = sorted({g.client_id for g in grants})
    staged += await _stage_for_clients(session, [(c, member_id, None) for c in clients], now)
    return staged


async def end_other_sessions_in(session: AsyncSession, member_id: str, *, keep_sid: str, now: datetime) -> list[str]:
    """In the caller's transaction (a password change): end every session of the member but
    `keep_sid` and revoke every grant not made in `keep_sid` (offline ones too: a refresh token
    obtained with the old password must not outlive it). Returns the back-channel deliveries."""
    others = (
        await session.exec(
            select(OpSession).where(
                OpSession.member_id == member_id, col(OpSession.ended_at).is_(None), OpSession.id != keep_sid
            )
        )
    ).all()
    staged = await end_sessions_in(session, [op.id for op in others], now)
    grants = (
        await session.exec(select(Grant).where(Grant.member_id == member_id, col(Grant.revoked_at).is_(None)))
    ).all()
    for grant in grants:
        if grant.session_id != keep_sid:
            await revoke_grant(session, grant.id, now)
    return staged


async def end_sessions(provider: Provider, sids: list[str]) -> None:
    """End these sessions and tell each client at once (failed deliveries are retried later)."""
    async with provider.db.transaction() as session:
        staged = await end_sessions_in(session, sids, provider.now())
    await backchannel.deliver_due(provider, staged)

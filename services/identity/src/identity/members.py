"""Members: the one member ID (`mbr_` + ULID, issued once, never changed or reused), registration,
sign-in checks, profile, email and password changes. Each change publishes its event."""

from __future__ import annotations

import re
from datetime import datetime

from kizuna.identity.v1 import events_pb2
from kizuna.kit.clock import timestamp
from kizuna.kit.db import UTCDateTime
from kizuna.kit.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from kizuna.kit.events import publish
from sqlalchemy import Column, String
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from identity.passwords import Passwords, check_policy

ACTIVE = "active"
DELETED = "deleted"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Member(SQLModel, table=True):
    __tablename__ = "identity_member"

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    email: str = Field(sa_column=Column(String(320), nullable=False, unique=True))
    display_name: str = Field(sa_column=Column(String(100), nullable=False))
    password_hash: str = Field(sa_column=Column(String(200), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    erased_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    email_verified_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


def new_member_id() -> str:
    return f"mbr_{ULID()}"


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively and without surrounding space; the form is checked."""
    value = email.strip().lower()
    if len(value) > 320 or not _EMAIL.match(value):
        raise InvalidArgument("Enter a valid email address.")
    return value


def clean_display_name(name: str) -> str:
    value = " ".join(name.split())
    if not 1 <= len(value) <= 100:
        raise InvalidArgument("Enter a display name of 1 to 100 characters.")
    return value


async def by_email(session: AsyncSession, email: str) -> Member | None:
    return (await session.exec(select(Member).where(Member.email == email))).first()


async def get(session: AsyncSession, member_id: str) -> Member:
    member = await session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}")
    return member


async def register(
    session: AsyncSession, passwords: Passwords, *, email: str, display_name: str, password: str, now: datetime
) -> Member:
    """Create a member and stage `identity.member.registered` in the same transaction."""
    email = normalize_email(email)
    display_name = clean_display_name(display_name)
    check_policy(password, email=email, display_name=display_name)
    if await by_email(session, email) is not None:
        raise AlreadyExists("An account with this email already exists; sign in instead.")
    member = Member(
        id=new_member_id(),
        email=email,
        display_name=display_name,
        password_hash=passwords.hash(password),
        status=ACTIVE,
        created_at=now,
        updated_at=now,
    )
    session.add(member)
    await publish(
        session,
        "identity.member.registered",
        events_pb2.MemberRegistered(member_id=member.id, display_name=display_name, registered_at=timestamp(now)),
        member_id=member.id,
    )
    return member


async def _updated(session: AsyncSession, member: Member, fields: list[str], now: datetime) -> None:
    member.updated_at = now
    session.add(member)
    await publish(
        session,
        "identity.member.updated",
        events_pb2.MemberUpdated(member_id=member.id, changed_fields=fields, updated_at=timestamp(now)),
        member_id=member.id,
    )


async def update_profile(session: AsyncSession, member: Member, *, display_name: str, now: datetime) -> None:
    name = clean_display_name(display_name)
    if name != member.display_name:
        member.display_name = name
        await _updated(session, member, ["display_name"], now)


async def change_email(
    session: AsyncSession, passwords: Passwords, member: Member, *, new_email: str, password: str, now: datetime
) -> None:
    if not passwords.verify(member.password_hash, password):
        raise Unauthenticated("Your current password is not correct.")
    email = normalize_email(new_email)
    if email == member.email:
        return
    if await by_email(session, email) is not None:
        raise AlreadyExists("Another account already uses this email.")
    member.email = email
    fields = ["email"]
    if member.email_verified_at is not None:  # the new address is not proven yet
        member.email_verified_at = None
        fields.append("email_verified")
    await _updated(session, member, fields, now)


async def mark_email_verified(session: AsyncSession, member: Member, now: datetime) -> None:
    if member.email_verified_at is None:
        member.email_verified_at = now
        await _updated(session, member, ["email_verified"], now)


async def change_password(
    session: AsyncSession, passwords: Passwords, member: Member, *, current: str, new: str, now: datetime
) -> None:
    if not passwords.verify(member.password_hash, current):
        raise Unauthenticated("Your current password is not correct.")
    check_policy(new, email=member.email, display_name=member.display_name)
    member.password_hash = passwords.hash(new)
    # A password is not a member field other services see: no event.
    member.updated_at = now
    session.add(member)

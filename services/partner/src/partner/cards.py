"""The member's point card: a card number, a secret its rotating codes come from, and the
member's own grant that lets a till spend their points while the card's code is shown.

Enrolling (from the card page, signed in) keeps the member's tokens of that sign-in; the till
never sees them. Revoking deletes the card: its codes stop working at once, and so does the grant
here. Signing out everywhere at identity ends the grant too (identity revokes it); the member
then enrolls again to spend at tills (earning needs no grant).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
from kizuna.kit import outbound
from kizuna.kit.errors import FailedPrecondition, NotFound, Unavailable
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from partner import codes
from partner.models import Card


async def of_member(session: AsyncSession, member_id: str) -> Card | None:
    return (await session.exec(select(Card).where(col(Card.member_id) == member_id))).first()


async def enroll(
    session: AsyncSession,
    member_id: str,
    *,
    access_token: str,
    refresh_token: str,
    access_expires_at: datetime,
    now: datetime,
) -> Card:
    """A new card (a new number and secret: earlier codes stop working) with the member's grant."""
    await session.exec(delete(Card).where(col(Card.member_id) == member_id))
    card = Card(
        number=codes.new_card_number(),
        member_id=member_id,
        secret_hex=codes.new_secret().hex(),
        access_token=access_token,
        refresh_token=refresh_token,
        access_expires_at=access_expires_at,
        created_at=now,
    )
    session.add(card)
    return card


async def revoke(session: AsyncSession, member_id: str) -> bool:
    card = await of_member(session, member_id)
    if card is None:
        return False
    await session.delete(card)
    return True


def current_code(card: Card, now: datetime) -> str:
    return codes.payload(card.number, bytes.fromhex(card.secret_hex), now.timestamp())


class Grants:
    """The member's access token from their card's grant, refreshed at identity when near expiry."""

    def __init__(
        self, issuer: str, client_id: str, client_secret: str, *, token_endpoint: str = "", timeout: float = 10.0
    ) -> None:
        self.issuer = issuer.rstrip("/")
        # Discovered from the issuer on first use (identity may still be starting when we start).
        self.token_endpoint = token_endpoint
        self.client_id = client_id
        self.client_secret = client_secret
        self._http = outbound.async_client(timeout=timeout)

    async def _endpoint(self) -> str:
        if not self.token_endpoint:
            try:
                response = await self._http.get(f"{self.issuer}/.well-known/openid-configuration")
                response.raise_for_status()
                self.token_endpoint = str(response.json()["token_endpoint"])
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                raise Unavailable("identity cannot be reached to renew the member's card; try again") from exc
        return self.token_endpoint

    async def access_token(self, session: AsyncSession, card: Card, now: datetime) -> str:
        if card.access_expires_at - now > timedelta(seconds=30):
            return card.access_token
        if not card.refresh_token:
            raise FailedPrecondition("the member's card needs renewing: ask them to open their card page")
        response = await self._http.post(
            await self._endpoint(),
            auth=(self.client_id, self.client_secret),
            data={"grant_type": "refresh_token", "refresh_token": card.refresh_token},
        )
        if response.status_code != 200:
            raise FailedPrecondition("the member's card needs renewing: ask them to open their card page")
        tokens = response.json()
        card.access_token = str(tokens["access_token"])
        card.refresh_token = str(tokens.get("refresh_token", card.refresh_token))
        card.access_expires_at = now + timedelta(seconds=int(tokens.get("expires_in", 60)))
        session.add(card)
        return card.access_token

    async def aclose(self) -> None:
        await self._http.aclose()


async def by_number(session: AsyncSession, number: str) -> Card:
    card = await session.get(Card, number)
    if card is None:
        raise NotFound("this card is not known; ask the member to show their code again")
    return card

"""Email verification: a signed, expiring link proves the member reads mail at their address.

The link carries (member id, email) signed with a secret derived from the current key-encryption
key version (links made under an older version still verify while it is configured); it
verifies only while the member's email is still that address, so a link for an old address is
useless after an email change (which clears the verification).

Delivery: there is no mail transport in the ecosystem yet. Messages are written as `.eml` files to
`IDENTITY_MAIL_DIR` (default `KIZUNA_DATA_DIR/mail`), a local mail drop; a real deployment plugs
an SMTP or provider API in `MailDrop.send`'s place.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlencode

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from kizuna.kit.errors import InvalidArgument
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from identity import members

log = logging.getLogger("identity.email")
LINK_SECONDS = 48 * 3600


class MailDrop:
    """Writes each message as an .eml file (atomically: temp file, then rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, to: str, subject: str, body: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        message = EmailMessage()
        message["To"], message["From"], message["Subject"] = to, "Kizuna ID <no-reply@kizuna.invalid>", subject
        message.set_content(body)
        path = self.directory / f"{ULID()}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(bytes(message))
        os.replace(tmp, path)
        log.info("email written to the local mail drop", extra={"subject": subject})
        return path


class EmailVerifier:
    def __init__(self, secrets: list[bytes], issuer_url: str, mail: MailDrop) -> None:
        # `secrets` current first; itsdangerous signs with the last and accepts every one.
        self._signer = URLSafeTimedSerializer(list(reversed(secrets)), salt="identity-email-verification")
        self.issuer_url = issuer_url
        self.mail = mail

    def link(self, member: members.Member) -> str:
        token = self._signer.dumps({"m": member.id, "e": member.email})
        return f"{self.issuer_url}/verify-email?{urlencode({'token': token})}"

    def send(self, member: members.Member) -> None:
        self.mail.send(
            member.email,
            "Confirm your email address for your Kizuna ID",
            f"Hello {member.display_name},\n\nConfirm that this is your address by opening this link "
            f"(valid for 48 hours):\n\n{self.link(member)}\n\nIf you did not ask for this, ignore this message.\n",
        )

    async def confirm(self, session: AsyncSession, token: str, now: datetime) -> members.Member:
        """Mark the member's email verified; raises InvalidArgument for a bad, old or stale link."""
        try:
            data = self._signer.loads(token, max_age=LINK_SECONDS)
        except SignatureExpired:
            raise InvalidArgument("This confirmation link has expired; ask for a new one.") from None
        except BadSignature:
            raise InvalidArgument("This confirmation link is not valid.") from None
        member = await session.get(members.Member, str(data.get("m", "")))
        if member is None or member.status != members.ACTIVE or member.email != data.get("e"):
            raise InvalidArgument("This confirmation link is for an address this account no longer uses.")
        await members.mark_email_verified(session, member, now)
        return member

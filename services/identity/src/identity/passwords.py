"""Passwords: Argon2id hashes and the password policy (NIST SP 800-63B: length, not composition)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from kizuna.kit.errors import InvalidArgument

MIN_LENGTH = 10
MAX_LENGTH = 128
# A short deny-list of the passwords attackers try first; a real deployment adds a breach corpus.
COMMON = frozenset(
    {
        "password123",
        "1234567890",
        "qwertyuiop",
        "password1234",
        "iloveyou123",
        "letmein1234",
        "welcome1234",
        "0123456789",
        "passw0rd123",
        "administrator",
    }
)


def check_policy(password: str, *, email: str = "", display_name: str = "") -> None:
    """Raise InvalidArgument with a message a member can act on when `password` is not acceptable."""
    if len(password) < MIN_LENGTH:
        raise InvalidArgument(f"Choose a password of at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        raise InvalidArgument(f"Choose a password of at most {MAX_LENGTH} characters.")
    lowered = password.lower()
    if lowered in COMMON or len(set(password)) < 4:
        raise InvalidArgument("That password is too easy to guess; choose another.")
    if (email and lowered == email.lower()) or (display_name and lowered == display_name.lower()):
        raise InvalidArgument("Your password must not be your email address or name.")


class Passwords:
    """Argon2id hashing with configurable cost; verifies against a dummy hash for unknown accounts."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy = self._hasher.hash("dummy password for unknown accounts")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when `password` matches; spends the same effort when there is no account."""
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)

"""Accounts: password hashing (argon2id), login throttling and CSRF tokens.

- Passwords are hashed with argon2id (``argon2-cffi``'s :class:`~argon2.PasswordHasher`,
  its default parameters, which follow RFC 9106's recommendation); a hash made with older
  parameters is upgraded at the next successful login.
- :class:`LoginThrottle`: after ``free_failures`` wrong passwords for a user name or from
  a client address within ``window_s``, further attempts are refused for a delay that
  doubles with each failure (up to ``max_delay_s``), whether the password is right or not.
- CSRF: a random token per session; every form carries it and every state-changing
  request must send it back (:func:`csrf_ok`).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .store import StationError, StationStore

__all__ = ["LoginThrottle", "check_password", "csrf_ok", "hash_password", "new_csrf_token"]

_HASHER = PasswordHasher()

MIN_PASSWORD = 10


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (refused when shorter than 10 characters)."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise StationError(f"the password must have at least {MIN_PASSWORD} characters; choose a longer one")
    return _HASHER.hash(password)


# A hash to verify against when the user does not exist, so that a wrong name and a wrong
# password take the same time (no user enumeration by timing).
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


def check_password(store: StationStore, name: str, password: str) -> str | None:
    """The user's role if ``password`` is right, else ``None``."""
    user = store.user(name) if name else None
    try:
        _HASHER.verify(user.pw_hash if user else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _HASHER.check_needs_rehash(user.pw_hash):
        store.update_hash(name, _HASHER.hash(password))
    return user.role


@dataclass
class _Failures:
    count: int = 0
    first: float = 0.0
    blocked_until: float = 0.0


@dataclass
class LoginThrottle:
    """Wrong-password bookkeeping per user name and per client address (in memory).

    Parameters
    ----------
    free_failures : int
        Wrong passwords allowed within ``window_s`` before attempts are delayed.
    window_s : float
        Failures older than this are forgotten.
    base_delay_s, max_delay_s : float
        The first delay, doubled with each further failure, capped.
    clock : callable
        Time source (tests pass a fake).

    Examples
    --------
    >>> t = LoginThrottle(clock=lambda: 100.0)
    >>> for _ in range(5):
    ...     t.failed("ana", "10.0.0.9")
    >>> t.retry_after("ana", "10.0.0.9") > 0
    True
    >>> t.retry_after("ben", "10.0.0.8")
    0.0
    """

    free_failures: int = 5
    window_s: float = 900.0
    base_delay_s: float = 30.0
    max_delay_s: float = 900.0
    clock: Callable[[], float] = time.time
    _by_key: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _keys(self, name: str, client: str) -> tuple[str, str]:
        return f"user:{name.lower()}", f"addr:{client}"

    def retry_after(self, name: str, client: str) -> float:
        """Seconds before this name or address may try again (0: now)."""
        now = self.clock()
        with self._lock:
            wait = 0.0
            for key in self._keys(name, client):
                f = self._by_key.get(key)
                if f is not None:
                    wait = max(wait, f.blocked_until - now)
            return max(0.0, wait)

    def failed(self, name: str, client: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._by_key) > 100_000:  # bound memory under a flood of made-up names
                self._by_key = {k: f for k, f in self._by_key.items() if now - f.first < self.window_s}
            for key in self._keys(name, client):
                f = self._by_key.get(key)
                if f is None or now - f.first > self.window_s:
                    f = self._by_key[key] = _Failures(0, now)
                f.count += 1
                if f.count >= self.free_failures:
                    delay = min(self.max_delay_s, self.base_delay_s * 2 ** (f.count - self.free_failures))
                    f.blocked_until = now + delay

    def succeeded(self, name: str, client: str) -> None:
        with self._lock:
            self._by_key.pop(self._keys(name, client)[0], None)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: object, sent: object) -> bool:
    """True when the token sent matches the session's (constant-time comparison)."""
    return (
        isinstance(expected, str)
        and isinstance(sent, str)
        and len(expected) >= 32
        and hmac.compare_digest(expected.encode(), sent.encode())
    )

"""Operators, passwords, sessions, CSRF tokens and the login rate limit.

- Passwords are hashed with Argon2id (argon2-cffi's :class:`~argon2.PasswordHasher`, its
  RFC 9106 "low memory" defaults unless told otherwise) and stored in the ``operators`` table.
  A login for an unknown name is verified against a dummy hash, so both take as long.
- Sessions live in this process's memory: a 256-bit random token in an HttpOnly,
  SameSite=Strict cookie (Secure when served over TLS), an idle timeout and an absolute
  lifetime. A restart logs everyone out; nothing about a session is on disk.
- Every session has its own CSRF token, which every state-changing form posts back
  (``csrf`` field, compared in constant time).
- Failed logins are counted per (name, client address) and per client address within a
  sliding window; past the limit the login answers 429 until the window has moved on.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from contract.errors import ConfigError
from dashboard.store import Store

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD: Final = 10
FIRST_OPERATOR: Final = "admin"


def check_operator_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"operator name {name!r}: use 1-64 letters, digits and _ . @ - (starting with a "
            "letter or digit)"
        )
    return name


class Passwords:
    """Argon2id hashes of operator passwords, in the store."""

    def __init__(self, store: Store, hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._hasher = hasher or PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def set(self, name: str, password: str) -> None:
        check_operator_name(name)
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"the password must have at least {MIN_PASSWORD} characters")
        self._store.set_operator(name, self._hasher.hash(password))

    def verify(self, name: str, password: str) -> bool:
        stored = self._store.operator_hash(name) if NAME.fullmatch(name) else None
        try:
            self._hasher.verify(stored or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if stored is None:
            return False
        if self._hasher.check_needs_rehash(stored):
            self._store.set_operator(name, self._hasher.hash(password))
        return True

    def ensure_first_operator(self) -> str | None:
        """With no operator at all: create ``admin`` with a random password and return it
        (to be shown once); otherwise None."""
        if self._store.operator_count() > 0:
            return None
        password = secrets.token_urlsafe(15)
        self.set(FIRST_OPERATOR, password)
        return password


@dataclass
class Session:
    operator: str
    csrf: str
    created: float
    last_used: float


class Sessions:
    """Server-side sessions keyed by a random token (the cookie value)."""

    def __init__(
        self,
        clock: Callable[[], float],
        idle_s: float = 3600.0,
        lifetime_s: float = 12 * 3600.0,
    ) -> None:
        self._clock = clock
        self._idle = idle_s
        self._lifetime = lifetime_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, operator: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(operator, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._expire(now)
            self._sessions[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_used > self._idle or now - session.created > self._lifetime:
                del self._sessions[token]
                return None
            session.last_used = now
            return session

    def drop(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def _expire(self, now: float) -> None:
        for token, s in list(self._sessions.items()):
            if now - s.last_used > self._idle or now - s.created > self._lifetime:
                del self._sessions[token]


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf, str(submitted))


@dataclass
class LoginLimiter:
    """At most ``per_name`` failures per (name, client) and ``per_client`` per client in
    ``window_s``; :meth:`blocked_for` says how long a blocked one still has to wait."""

    clock: Callable[[], float]
    per_name: int = 5
    per_client: int = 20
    window_s: float = 300.0
    _fails: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def blocked_for(self, name: str, client: str) -> float:
        now = self.clock()
        with self._lock:
            waits = [
                self._wait(("name", f"{name}\x00{client}"), self.per_name, now),
                self._wait(("client", client), self.per_client, now),
            ]
        return max(waits)

    def failed(self, name: str, client: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._fails) > 10_000:  # bounded memory under a spray of names
                for key in list(self._fails):
                    self._wait(key, 1, now)
            for key in (("name", f"{name}\x00{client}"), ("client", client)):
                self._fails.setdefault(key, deque()).append(now)

    def succeeded(self, name: str, client: str) -> None:
        with self._lock:
            self._fails.pop(("name", f"{name}\x00{client}"), None)

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        fails = self._fails.get(key)
        if not fails:
            return 0.0
        while fails and now - fails[0] >= self.window_s:
            fails.popleft()
        if not fails:
            del self._fails[key]
            return 0.0
        if len(fails) < limit:
            return 0.0
        return self.window_s - (now - fails[-limit])

"""Dashboard accounts and sign-in sessions in PostgreSQL: argon2id password hashes, roles
`reviewer` and `admin`, and server-side sessions (the cookie carries a random token, the table only
its SHA-256, so a database leak yields no usable cookie and signing out or disabling a user ends
their sessions at once). Every function runs inside a transaction the caller owns; none commits.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from foveal.errors import DashboardError
from foveal.storage.models import ROLES, User, UserSession

MIN_PASSWORD_LENGTH = 8
_HASHER = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory profile
# Verified against when the username is unknown, so a miss costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise DashboardError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters", 422)
    return _HASHER.hash(password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_role(role: str) -> str:
    if role not in ROLES:
        raise DashboardError(f"role {role!r} is not one of {', '.join(ROLES)}", 422)
    return role


def add_user(session: Session, username: str, password: str, role: str) -> User:
    """Create an active user; DashboardError (409) when the name is taken."""
    check_role(role)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise DashboardError(f"user {username!r} exists already", 409)
    user = User(username=username, password_hash=hash_password(password), role=role, active=True)
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def update_user(session: Session, user_id: int, *, role: str | None = None, active: bool | None = None,
                password: str | None = None) -> User:
    """Change a user's role, active flag or password; disabling or a new password ends their sessions."""
    user = session.get(User, user_id)
    if user is None:
        raise DashboardError(f"no user {user_id}", 404)
    if role is not None:
        user.role = check_role(role)
    if password:
        user.password_hash = hash_password(password)
    if active is not None:
        user.active = active
    if password or active is False:
        session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this name and password, else None (same cost either way)."""
    user = find_user(session, username)
    if user is None:
        _verify(_DUMMY_HASH, password)
        return None
    if not _verify(user.password_hash, password) or not user.active:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    user.last_login_at = datetime.now(UTC)
    return user


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, user: User, hours: float) -> str:
    """A new sign-in for `user`; returns the cookie token (shown once, stored hashed)."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    session.add(UserSession(token_sha256=token_sha256(token), user_id=user.id, created_at=now,
                            expires_at=now + timedelta(hours=hours)))
    # Housekeeping on sign-in: expired sessions of anyone are dead weight.
    session.execute(delete(UserSession).where(UserSession.expires_at < now))
    return token


def session_user(session: Session, token: str) -> User | None:
    """The active user a cookie token belongs to, None when unknown, expired or disabled."""
    row = session.execute(
        select(User).join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.token_sha256 == token_sha256(token), UserSession.expires_at > datetime.now(UTC),
               User.active.is_(True))
    ).scalar_one_or_none()
    return row


def close_session(session: Session, token: str) -> None:
    session.execute(delete(UserSession).where(UserSession.token_sha256 == token_sha256(token)))

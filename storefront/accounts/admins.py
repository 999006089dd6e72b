"""Admin accounts: hashed passwords, throttled sign-in, and the first account from settings."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from enum import Enum

from flask import Flask, current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from werkzeug.security import check_password_hash, generate_password_hash

from storefront import transactions
from storefront.accounts.audit import log_action
from storefront.extensions import db
from storefront.models import AdminUser, SignInThrottle, utcnow

log = logging.getLogger("smi.admin")

MIN_PASSWORD_LENGTH = 10
# Failures older than this are forgotten.
FAILURE_WINDOW = dt.timedelta(hours=1)
# An address may try several accounts: it gets this many times the room of one account.
ADDRESS_FACTOR = 3

_DUMMY_HASH: str | None = None


class AccountError(ValueError):
    """An account could not be created or changed; the message says why."""


def hash_password(password: str) -> str:
    """A salted, slow hash of the password (scrypt, Werkzeug's default)."""
    return generate_password_hash(password)


def check_password_strength(password: str) -> None:
    """Refuse passwords too short to resist guessing."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def normalise_email(email: str) -> str:
    """Emails are compared without case or surrounding spaces."""
    return email.strip().lower()


def create_admin(email: str, password: str, name: str = "", *, reset: bool = False) -> AdminUser:
    """Create an admin (or, with `reset`, set an existing one's password); commits."""
    email = normalise_email(email)
    if "@" not in email or len(email) > 255:
        raise AccountError("enter a valid email address")
    check_password_strength(password)
    user = db.session.scalar(select(AdminUser).where(AdminUser.email == email))
    if user is not None and not reset:
        raise AccountError(f"an admin with the email {email} exists (use --reset-password)")
    if user is None:
        user = AdminUser(email=email, name=name.strip() or email.split("@")[0])
        db.session.add(user)
    elif name.strip():
        user.name = name.strip()
    user.password_hash = hash_password(password)
    user.is_active = True
    log_action("cli", "admin_password_set" if reset else "admin_created", email)
    transactions.commit()
    return user


def ensure_first_admin(app: Flask) -> bool:
    """Create the account from ADMIN_EMAIL / ADMIN_PASSWORD when there is no admin yet."""
    email, password = app.config.get("ADMIN_EMAIL"), app.config.get("ADMIN_PASSWORD")
    if not email or not password:
        return False
    try:
        if db.session.scalar(select(func.count(AdminUser.id))):
            return False
        check_password_strength(password)
        db.session.add(
            AdminUser(
                email=normalise_email(email),
                name=normalise_email(email).split("@")[0],
                password_hash=hash_password(password),
            )
        )
        log_action("system", "admin_created", normalise_email(email), "from ADMIN_EMAIL")
        transactions.commit()
    except AccountError as exc:
        log.error("ADMIN_PASSWORD is not used: %s", exc)
        return False
    except IntegrityError:
        # Another process created it at the same moment.
        transactions.rollback()
        return False
    except SQLAlchemyError:
        transactions.rollback()
        log.warning("admin_users is not readable yet; run `flask db upgrade`")
        return False
    log.info("first admin account created for %s", normalise_email(email))
    return True


class SignIn(Enum):
    """How a sign-in attempt ended."""

    OK = "ok"
    WRONG = "wrong"
    SLOWED = "slowed"
    LOCKED = "locked"


@dataclass
class SignInResult:
    """The outcome, the account on success, and how long to wait when throttled."""

    outcome: SignIn
    user: AdminUser | None = None
    wait_seconds: int = 0

    @property
    def message(self) -> str:
        """What the sign-in page tells the person."""
        if self.outcome is SignIn.WRONG:
            return "That email and password don't match an admin account."
        if self.outcome is SignIn.SLOWED:
            return f"Too many failed sign-ins. Wait {self.wait_seconds} seconds, then try again."
        if self.outcome is SignIn.LOCKED:
            minutes = max(1, -(-self.wait_seconds // 60))
            return (
                "Too many failed sign-ins: signing in is locked for this account. "
                f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
            )
        return ""


@dataclass(frozen=True)
class ThrottlePolicy:
    """When failures start to slow sign-in, and when they lock it."""

    slow_after: int
    delay_seconds: int
    max_delay_seconds: int
    lock_after: int
    lock_minutes: int

    @classmethod
    def from_config(cls, app: Flask) -> ThrottlePolicy:
        """Read the policy (ADMIN_LOGIN_* settings) with sensible defaults."""
        config = app.config
        return cls(
            slow_after=int(config["ADMIN_LOGIN_SLOW_AFTER"]),
            delay_seconds=int(config["ADMIN_LOGIN_DELAY_SECONDS"]),
            max_delay_seconds=int(config["ADMIN_LOGIN_MAX_DELAY_SECONDS"]),
            lock_after=int(config["ADMIN_LOGIN_LOCK_AFTER"]),
            lock_minutes=int(config["ADMIN_LOGIN_LOCK_MINUTES"]),
        )

    def scaled(self, factor: int) -> ThrottlePolicy:
        """The same policy with `factor` times the room."""
        return ThrottlePolicy(
            self.slow_after * factor,
            self.delay_seconds,
            self.max_delay_seconds,
            self.lock_after * factor,
            self.lock_minutes,
        )


def _throttle_keys(email: str, address: str) -> list[str]:
    account = hashlib.sha256(normalise_email(email).encode()).hexdigest()[:40]
    return [f"account:{account}", f"address:{address[:100]}"]


def _rows(keys: list[str]) -> dict[str, SignInThrottle]:
    rows = db.session.scalars(select(SignInThrottle).where(SignInThrottle.key.in_(keys))).all()
    return {row.key: row for row in rows}


def _blocked(
    row: SignInThrottle | None, policy: ThrottlePolicy, now: dt.datetime
) -> SignInResult | None:
    if row is None:
        return None
    if row.locked_until is not None and row.locked_until > now:
        return SignInResult(SignIn.LOCKED, wait_seconds=_seconds(row.locked_until - now))
    if row.last_failure_at is None or now - row.last_failure_at > FAILURE_WINDOW:
        return None
    if row.failures >= policy.slow_after and policy.delay_seconds > 0:
        delay = min(
            policy.delay_seconds * 2 ** (row.failures - policy.slow_after),
            policy.max_delay_seconds,
        )
        ready = row.last_failure_at + dt.timedelta(seconds=delay)
        if ready > now:
            return SignInResult(SignIn.SLOWED, wait_seconds=_seconds(ready - now))
    return None


def _seconds(delta: dt.timedelta) -> int:
    return max(1, int(-(-delta.total_seconds() // 1)))


def _verify(email: str, password: str) -> AdminUser | None:
    global _DUMMY_HASH
    user = db.session.scalar(
        select(AdminUser).where(AdminUser.email == normalise_email(email), AdminUser.is_active)
    )
    if user is None:
        # Hash anyway, so an unknown email takes as long to refuse as a wrong password.
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password("not the password of anyone")
        check_password_hash(_DUMMY_HASH, password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def _record_failure(row: SignInThrottle, policy: ThrottlePolicy, now: dt.datetime) -> None:
    if row.last_failure_at is None or now - row.last_failure_at > FAILURE_WINDOW:
        row.failures = 0
    if row.locked_until is not None and row.locked_until <= now:
        row.locked_until = None
        row.failures = policy.slow_after
    row.failures += 1
    row.last_failure_at = now
    if row.failures >= policy.lock_after:
        row.locked_until = now + dt.timedelta(minutes=policy.lock_minutes)


def sign_in(
    email: str, password: str, address: str, now: dt.datetime | None = None
) -> SignInResult:
    """Check a sign-in attempt against the throttle, then the password; commits the counts.

    A slowed or locked attempt is refused before the password is looked at, so guessing during
    the wait learns nothing. A success clears the account's failures.
    """
    now = now or utcnow()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    policy = ThrottlePolicy.from_config(app)
    account_key, address_key = _throttle_keys(email, address)
    policies = {account_key: policy, address_key: policy.scaled(ADDRESS_FACTOR)}
    rows = _rows(list(policies))
    for key, key_policy in policies.items():
        blocked = _blocked(rows.get(key), key_policy, now)
        if blocked is not None:
            log.warning("admin sign-in refused (%s) from %s", blocked.outcome.value, address)
            return blocked
    user = _verify(email, password)
    if user is not None:
        for key in (account_key, address_key):
            if key in rows:
                db.session.delete(rows[key])
        user.last_login_at = now
        log_action(user.name, "signed_in", user.email, f"from {address}")
        transactions.commit()
        return SignInResult(SignIn.OK, user)
    locked = False
    for key, key_policy in policies.items():
        row = rows.get(key)
        if row is None:
            row = SignInThrottle(key=key, failures=0)
            db.session.add(row)
        _record_failure(row, key_policy, now)
        locked = locked or row.locked_until is not None
    try:
        transactions.commit()
    except IntegrityError:
        # A parallel attempt created the row first; its count stands.
        transactions.rollback()
    log.warning("admin sign-in failed from %s", address)
    if locked:
        log_action("system", "sign_in_locked", normalise_email(email)[:255], f"from {address}")
        transactions.commit()
        return SignInResult(SignIn.LOCKED, wait_seconds=policy.lock_minutes * 60)
    return SignInResult(SignIn.WRONG)


def session_key(user: AdminUser) -> str:
    """A value kept in the session that changes when the password does, ending old sessions."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:32]


def admin_for_session(admin_id: object, key: object) -> AdminUser | None:
    """The active admin a session belongs to, if its key still matches."""
    if not isinstance(admin_id, int) or not isinstance(key, str):
        return None
    user = db.session.get(AdminUser, admin_id)
    if user is None or not user.is_active or session_key(user) != key:
        return None
    return user

"""Admin accounts: hashed passwords, throttled sign-in, unlocking, and the first account."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from flask import Flask, current_app
from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
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
                "Too many failed sign-ins: signing in is locked for this address. "
                f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
            )
        return ""


@dataclass(frozen=True)
class ThrottlePolicy:
    """When failures start to slow sign-in, the longest wait, and when an address is locked."""

    slow_after: int
    delay_seconds: int
    max_delay_seconds: int
    lock_after: int
    lock_minutes: int

    @classmethod
    def from_config(cls, app: Flask) -> ThrottlePolicy:
        """Read the policy (ADMIN_LOGIN_* settings)."""
        config = app.config
        return cls(
            slow_after=int(config["ADMIN_LOGIN_SLOW_AFTER"]),
            delay_seconds=int(config["ADMIN_LOGIN_DELAY_SECONDS"]),
            max_delay_seconds=int(config["ADMIN_LOGIN_MAX_DELAY_SECONDS"]),
            lock_after=int(config["ADMIN_LOGIN_LOCK_AFTER"]),
            lock_minutes=int(config["ADMIN_LOGIN_LOCK_MINUTES"]),
        )

    def delay(self, failures: int) -> int:
        """Seconds to wait after `failures` recent failures: 0, then doubling, at most the max."""
        if failures < self.slow_after or self.delay_seconds <= 0:
            return 0
        doublings = min(failures - self.slow_after, 32)
        return min(self.delay_seconds * 2**doublings, self.max_delay_seconds)


def account_key(email: str) -> str:
    """The throttle row of an account (a digest: the email itself is not kept)."""
    return "account:" + hashlib.sha256(normalise_email(email).encode()).hexdigest()[:40]


def address_key(address: str) -> str:
    """The throttle row of an address."""
    return f"address:{address[:100]}"


def _counter(key: str) -> SignInThrottle | None:
    return db.session.scalar(select(SignInThrottle).where(SignInThrottle.key == key))


def _recent_failures(row: SignInThrottle | None, now: dt.datetime) -> int:
    if row is None or row.last_failure_at is None or now - row.last_failure_at > FAILURE_WINDOW:
        return 0
    return row.failures


def _refusal(
    account: SignInThrottle | None,
    address: SignInThrottle | None,
    policy: ThrottlePolicy,
    now: dt.datetime,
) -> SignInResult | None:
    """Why an attempt is refused before its password is looked at, if it is.

    Only the address's own failures refuse: a lock, or a wait since its last failure as long as
    its failures or the account's call for. An address that has not failed is never refused,
    whatever others did to the account.
    """
    if address is None:
        return None
    if address.locked_until is not None and address.locked_until > now:
        return SignInResult(SignIn.LOCKED, wait_seconds=_seconds(address.locked_until - now))
    failures = _recent_failures(address, now)
    if not failures or address.last_failure_at is None:
        return None
    delay = max(policy.delay(failures), policy.delay(_recent_failures(account, now)))
    if delay <= 0:
        return None  # (a simultaneous attempt may have stamped a failure later than `now`)
    ready = address.last_failure_at + dt.timedelta(seconds=delay)
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


def _count_failure(
    key: str, policy: ThrottlePolicy, now: dt.datetime, *, lockable: bool
) -> tuple[int, dt.datetime | None]:
    """Add one failure to a counter in one statement; its count and lock as they now stand.

    An INSERT … ON CONFLICT DO UPDATE, on SQLite and PostgreSQL alike: simultaneous failures are
    each counted (reading the count and writing it back kept one of them).
    """
    c = SignInThrottle.__table__.c
    locked = and_(c.locked_until.is_not(None), c.locked_until > now)
    lock_over = and_(c.locked_until.is_not(None), c.locked_until <= now)
    stale = or_(c.last_failure_at.is_(None), c.last_failure_at < now - FAILURE_WINDOW)
    # After a lock, the address starts again where failures are slowed, short of a new lock.
    restart = max(0, min(policy.slow_after, policy.lock_after - 1))
    failures = case(
        (locked, c.failures + 1), (stale, 1), (lock_over, restart + 1), else_=c.failures + 1
    )
    lock_until = now + dt.timedelta(minutes=policy.lock_minutes)
    changes: dict[str, Any] = {"failures": failures, "last_failure_at": now}
    first_lock = None
    if lockable:
        changes["locked_until"] = case(
            (locked, c.locked_until), (failures >= policy.lock_after, lock_until), else_=None
        )
        first_lock = lock_until if policy.lock_after <= 1 else None
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(SignInThrottle.__table__)
        .values(key=key, failures=1, last_failure_at=now, locked_until=first_lock)
        .on_conflict_do_update(index_elements=[c.key], set_=changes)
        .returning(c.failures, c.locked_until)
    )
    count, locked_until = db.session.execute(statement).one()
    return int(count), locked_until


def _signed_in(user: AdminUser, address: str, now: dt.datetime) -> SignInResult:
    """A success: the account's and the address's failures are forgotten; commits."""
    keys = [account_key(user.email), address_key(address)]
    db.session.execute(delete(SignInThrottle).where(SignInThrottle.key.in_(keys)))
    user.last_login_at = now
    log_action(user.name, "signed_in", user.email, f"from {address}")
    transactions.commit()
    return SignInResult(SignIn.OK, user)


def sign_in(
    email: str, password: str, address: str, now: dt.datetime | None = None
) -> SignInResult:
    """Check a sign-in attempt against the throttle, then the password; commits the counts.

    Failures are counted per account and per address. Only an address's own failures refuse it
    (a wait, then a lock for every account); the account's failures lengthen the wait of
    addresses that failed, never refuse one that has not. Each attempt is counted as a failure
    before the password is checked, so simultaneous attempts are all counted and no more of them
    are checked than the lock allows; a success clears the account's and the address's counts.
    """
    now = now or utcnow()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    policy = ThrottlePolicy.from_config(app)
    email = normalise_email(email)
    refused = _refusal(_counter(account_key(email)), _counter(address_key(address)), policy, now)
    if refused is not None:
        log.warning("admin sign-in refused (%s) from %s", refused.outcome.value, address)
        return refused
    _count_failure(account_key(email), policy, now, lockable=False)
    failures, locked_until = _count_failure(address_key(address), policy, now, lockable=True)
    transactions.commit()
    if failures > policy.lock_after and locked_until is not None:
        # Simultaneous attempts beyond the lock: refused without a look at the password.
        log.warning("admin sign-in refused (locked) from %s", address)
        return SignInResult(SignIn.LOCKED, wait_seconds=_seconds(locked_until - now))
    user = _verify(email, password)
    if user is not None:
        return _signed_in(user, address, now)
    log.warning("admin sign-in failed from %s", address)
    if failures == policy.lock_after:
        log_action("system", "sign_in_locked", email[:255], f"address {address} locked")
        transactions.commit()
        return SignInResult(SignIn.LOCKED, wait_seconds=policy.lock_minutes * 60)
    return SignInResult(SignIn.WRONG)


@dataclass(frozen=True)
class Unlocked:
    """What `unlock_admin` cleared."""

    email: str
    account_failures: int
    address: str | None = None
    address_failures: int = 0
    address_was_locked: bool = False

    def lines(self) -> list[str]:
        """What the command says it did, a line for the account and one for the address."""
        lines = [
            f"Cleared {_failures(self.account_failures)} of {self.email}."
            if self.account_failures
            else f"No failed sign-ins of {self.email} to clear."
        ]
        if self.address is not None:
            lock = ", and its lock" if self.address_was_locked else ""
            lines.append(
                f"Cleared {_failures(self.address_failures)} from {self.address}{lock}."
                if self.address_failures or self.address_was_locked
                else f"No failed sign-ins from {self.address} to clear."
            )
        return lines


def _failures(count: int) -> str:
    return f"{count} failed sign-in{'s' if count != 1 else ''}"


def _clear(key: str, now: dt.datetime) -> tuple[int, bool]:
    """Delete a counter; the failures it held and whether it held a lock in force."""
    row = db.session.execute(
        delete(SignInThrottle)
        .where(SignInThrottle.key == key)
        .returning(SignInThrottle.failures, SignInThrottle.locked_until)
    ).one_or_none()
    if row is None:
        return 0, False
    failures, locked_until = row
    return int(failures), locked_until is not None and locked_until > now


def unlock_admin(email: str, address: str | None = None, actor: str = "cli") -> Unlocked:
    """Clear an admin account's failed sign-ins and, when named, an address's and its lock.

    Audit-logged; commits. AccountError when there is no such admin or the address is not one.
    """
    email = normalise_email(email)
    if db.session.scalar(select(AdminUser.id).where(AdminUser.email == email)) is None:
        raise AccountError(f"there is no admin account with the email {email}")
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address.strip()))
        except ValueError as exc:
            raise AccountError(f"{address!r} is not an IP address") from exc
    now = utcnow()
    account_failures, _ = _clear(account_key(email), now)
    result = Unlocked(email, account_failures)
    detail = f"account: {_failures(account_failures)} cleared"
    if address is not None:
        failures, was_locked = _clear(address_key(address), now)
        result = Unlocked(email, account_failures, address, failures, was_locked)
        lock = " and its lock" if was_locked else ""
        detail += f"; address {address}: {_failures(failures)}{lock} cleared"
    log_action(actor, "admin_unlocked", email, detail)
    transactions.commit()
    return result


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

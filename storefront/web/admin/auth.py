"""Signing in and out of the admin area."""

from __future__ import annotations

import time

from flask import flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from storefront.accounts.admins import SignIn, session_key, sign_in
from storefront.accounts.audit import record_action
from storefront.web.admin.base import bp, current_admin, safe_next
from storefront.web.admin.forms import LoginForm

STATUS_OF = {SignIn.WRONG: 401, SignIn.SLOWED: 429, SignIn.LOCKED: 429}


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """The sign-in page; a success starts a fresh session and goes where the person was headed."""
    form = LoginForm(next=request.args.get("next", ""))
    if request.method == "GET" and current_admin() is not None:
        return redirect(safe_next(form.next.data))
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return render_template("admin/login.html", form=form), status
    result = sign_in(form.email.data or "", form.password.data or "", request.remote_addr or "")
    if result.outcome is not SignIn.OK or result.user is None:
        return render_template("admin/login.html", form=form, error=result.message), STATUS_OF[
            result.outcome
        ]
    target = safe_next(form.next.data)
    # A new session for the signed-in admin: nothing from before sign-in carries over.
    session.clear()
    session["admin_id"] = result.user.id
    session["admin_key"] = session_key(result.user)
    session["admin_since"] = int(time.time())
    return redirect(target, 303)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the admin's session."""
    admin = current_admin()
    if admin is not None:
        record_action(admin.name, "signed_out", admin.email)
    session.clear()
    flash("You are signed out.", "success")
    return redirect(url_for("admin.login"), 303)

"""Settings: the business knobs, stored in the database over the environment's defaults."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from storefront.accounts.audit import audit_page
from storefront.reports.job_list import parse_page
from storefront.settings_editor import (
    EDITABLE_BY_NAME,
    SettingRow,
    parse_form,
    setting_rows,
    update_settings,
)
from storefront.web.admin.base import admin_name, bp

AUDIT_PER_PAGE = 100


def _grouped(rows: list[SettingRow]) -> list[tuple[str, list[SettingRow]]]:
    groups: dict[str, list[SettingRow]] = {}
    for row in rows:
        groups.setdefault(row.item.group, []).append(row)
    return list(groups.items())


@bp.get("/settings")
def settings() -> ResponseReturnValue:
    """Every setting with its value, the environment's default, and who last changed it."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return render_template("admin/settings.html", groups=_grouped(setting_rows(app)), errors={})


@bp.post("/settings")
def settings_save() -> ResponseReturnValue:
    """Validate every value; store them all, or none with a message for each bad one."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    raw = parse_form(request.form, request.form.getlist)
    reset = {name for name in request.form.getlist("reset") if name in EDITABLE_BY_NAME}
    errors, changed = update_settings(app, raw, admin_name(), reset)
    if errors:
        return render_template(
            "admin/settings.html", groups=_grouped(setting_rows(app, raw)), errors=errors
        ), 400
    if changed:
        labels = ", ".join(EDITABLE_BY_NAME[name].label for name in changed)
        flash(f"Saved: {labels}.", "success")
    else:
        flash("Nothing changed.", "success")
    return redirect(url_for("admin.settings"), 303)


@bp.get("/audit")
def audit_log() -> ResponseReturnValue:
    """The audit log, newest first."""
    page = parse_page(request.args.get("page"))
    rows, more = audit_page(page, AUDIT_PER_PAGE)
    return render_template(
        "admin/audit.html",
        rows=rows,
        page=page,
        more=more,
    )

"""The system page: workers, queues, RQ's registries, storage, versions and the periodic runs."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from storefront.maintenance.failed_jobs import (
    AlreadyDone,
    FailedJobRefused,
    delete_failed,
    requeue_failed,
)
from storefront.maintenance.system import system_status
from storefront.web.admin.base import admin_name, bp, new_request_id
from storefront.web.admin.forms import ConfirmForm

FAILED_ACTIONS = {"requeue": requeue_failed, "delete": delete_failed}


@bp.get("/system")
def system() -> ResponseReturnValue:
    """What runs, what waits, what failed, and whether storage and the database answer."""
    status = system_status(current_app._get_current_object())  # type: ignore[attr-defined]
    return render_template("admin/system.html", s=status, new_request_id=new_request_id)


@bp.post("/system/failed/<rq_job_id>/<action>")
def failed_job_action(rq_job_id: str, action: str) -> ResponseReturnValue:
    """Requeue or delete one failed RQ job, once per form."""
    if action not in FAILED_ACTIONS:
        abort(404)
    form = ConfirmForm()
    if not form.validate():
        flash("The form expired: try again.", "error")
        return redirect(url_for("admin.system"), 303)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        message = FAILED_ACTIONS[action](app, rq_job_id, admin_name(), form.request_id.data or None)
    except AlreadyDone:
        flash("This was done already: the form was sent twice, and done once.", "success")
    except FailedJobRefused as exc:
        flash(str(exc), "error")
    else:
        flash(message, "success")
    return redirect(url_for("admin.system", _anchor="failed-title"), 303)

"""Jobs: the filtered list, its CSV, a job's page and the actions on it."""

from __future__ import annotations

from flask import (
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue

from storefront import settings
from storefront.jobs import actions as job_actions
from storefront.jobs.actions import ACTIONS, ActionRefused, AlreadyDone
from storefront.jobs.state import get_job
from storefront.models import JOB_STATUSES, PAYMENT_STATUSES, Job, utcnow
from storefront.reports.job_list import (
    JobFilters,
    admin_actions_for,
    csv_rows,
    job_page,
    timeline,
)
from storefront.web.admin.base import admin_name, bp, new_request_id
from storefront.web.admin.forms import ConfirmForm, ExtendForm, RefundForm
from storefront.web.errors import render_error


@bp.get("/jobs")
def jobs() -> ResponseReturnValue:
    """Jobs filtered by status, payment, dates and a search; sortable and paginated."""
    filters = JobFilters.from_args(request.args)
    page = job_page(filters)
    return render_template(
        "admin/jobs.html",
        filters=filters,
        page=page,
        statuses=JOB_STATUSES,
        payment_statuses=PAYMENT_STATUSES,
    )


@bp.get("/jobs.csv")
def jobs_csv() -> ResponseReturnValue:
    """The filtered list as CSV, every column, streamed; 400 when a filter is malformed."""
    filters = JobFilters.from_args(request.args)
    if filters.errors:
        # The list page drops a bad filter and says so; a download would silently hold more.
        return render_error(400, " ".join(filters.errors))
    stamp = utcnow().strftime("%Y%m%d-%H%M")
    return Response(
        stream_with_context(csv_rows(filters)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="jobs-{stamp}.csv"'},
    )


def _job_or_404(job_id: str) -> Job:
    job = get_job(job_id)
    if job is None:
        abort(404)
    return job


def render_job(job: Job, error: str | None = None, status: int = 200) -> ResponseReturnValue:
    """The job's page: every column, its timeline, the error, and the actions its state allows."""
    columns = [(column.name, getattr(job, column.key)) for column in Job.__table__.columns]
    return render_template(
        "admin/job.html",
        job=job,
        columns=columns,
        timeline=timeline(job),
        actions=ACTIONS,
        allowed=job_actions.available_actions(job),
        audit=admin_actions_for(job.job_id),
        remaining=job_actions.remaining_refundable(job),
        error=error,
        downloads_allowed=int(settings.get("DOWNLOAD_MAX_COUNT")),
    ), status


@bp.get("/jobs/<job_id>")
def job_detail(job_id: str) -> ResponseReturnValue:
    """One job."""
    return render_job(_job_or_404(job_id))


def _form_for(action: str) -> ConfirmForm:
    if action == "refund":
        return RefundForm()
    if action == "extend":
        return ExtendForm()
    return ConfirmForm()


def _render_confirm(
    job: Job, action: str, form: ConfirmForm, error: str | None = None, status: int = 200
) -> ResponseReturnValue:
    return render_template(
        "admin/job_confirm.html",
        job=job,
        action=ACTIONS[action],
        form=form,
        error=error,
        remaining=job_actions.remaining_refundable(job),
    ), status


@bp.get("/jobs/<job_id>/actions/<action>")
def job_action_confirm(job_id: str, action: str) -> ResponseReturnValue:
    """Ask before doing: what the action will do, and its fields."""
    if action not in ACTIONS:
        abort(404)
    job = _job_or_404(job_id)
    reason = job_actions.available_actions(job)[action]
    if reason:
        return render_job(job, reason, 409)
    form = _form_for(action)
    form.request_id.data = new_request_id()
    return _render_confirm(job, action, form)


@bp.post("/jobs/<job_id>/actions/<action>")
def job_action(job_id: str, action: str) -> ResponseReturnValue:
    """Do the confirmed action, or say why it can't be done (and change nothing)."""
    if action not in ACTIONS:
        abort(404)
    job = _job_or_404(job_id)
    form = _form_for(action)
    if not form.validate():
        problems = "; ".join(e for errors in form.errors.values() for e in errors)
        return _render_confirm(job, action, form, problems, 400)
    fields = {name: str(request.form.get(name, "")) for name in ("amount", "reason", "hours")}
    try:
        message = job_actions.run(
            action, job.job_id, admin_name(), form.request_id.data or None, **fields
        )
    except AlreadyDone:
        flash("This was done already: the form was sent twice, and done once.", "success")
        return redirect(url_for("admin.job_detail", job_id=job.job_id), 303)
    except ActionRefused as exc:
        fresh = get_job(job.job_id) or job
        if job_actions.available_actions(fresh)[action] is None:
            return _render_confirm(fresh, action, form, str(exc), 409)
        return render_job(fresh, str(exc), 409)
    flash(message, "success")
    return redirect(url_for("admin.job_detail", job_id=job.job_id), 303)

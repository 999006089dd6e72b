"""gunicorn's settings for the web app: `gunicorn wsgi:app` reads this file from the current folder.

Importing it only reads the environment and the CPU count: no app, no logging set up, no files.
Command-line flags win over what is set here (`gunicorn --workers 2 wsgi:app`).

- `GUNICORN_BIND`: where to listen, `host:port` or `unix:/path` (comma-separated for several);
  default `127.0.0.1:8000`
- `WEB_CONCURRENCY`: worker processes; default 2 × cores + 1, at most 9
- `GUNICORN_THREADS`: threads per worker; default 2 × cores, at most 5
- `GUNICORN_TIMEOUT`: seconds a worker may stay silent before it is restarted; default 60
- `PROMETHEUS_MULTIPROC_DIR`: where the workers keep their figures for `/metrics`; default a
  private temporary folder made when gunicorn starts and removed when it stops
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import tempfile
import traceback
from typing import Any

from gunicorn.glogging import Logger

from storefront import logs
from storefront.redaction import RedactSecrets, redact_atoms


def _cores() -> int:
    """The cores this process may run on (a container's or a cgroup's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# Processes use the cores (one GIL each), gunicorn's rule of thumb: 2 × cores + 1. Capped at 9 so
# that with PostgreSQL the web side holds at most 9 × 5 connections (SQLAlchemy's pool of 5 per
# process), well under PostgreSQL's default max_connections of 100.
workers = _int_env("WEB_CONCURRENCY", min(2 * _cores() + 1, 9))
# Threads wait: for the database, Redis, Stripe's API, a slow buyer's socket. At most 5, the pool
# size, so a thread never waits for a database connection.
worker_class = "gthread"
threads = _int_env("GUNICORN_THREADS", min(2 * _cores(), 5))
bind = [a.strip() for a in os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",")]

# A request may wait up to 20 s on Stripe (the app's timeout for its API); Redis and the
# database answer in seconds; a worker silent for 60 s is stuck. On a restart or a deploy,
# requests under way get 30 s to finish.
timeout = _int_env("GUNICORN_TIMEOUT", 60)
graceful_timeout = 30
keepalive = 5  # nginx opens a connection per request; this covers clients that come directly

# gunicorn 24+ opens a control socket in $XDG_RUNTIME_DIR or ~/.gunicorn, one per user: two
# gunicorns of one user would share it. systemd restarts and reloads this one; no socket needed.
control_socket_disable = True


# /metrics: each worker writes its HTTP figures to files in PROMETHEUS_MULTIPROC_DIR, and the
# worker answering a scrape adds up every file. The variable must be set before a worker imports
# prometheus_client, so the master sets it here, before it forks (with --preload, which loads the
# app in the master first, set it in the environment). A given folder is emptied of an earlier
# run's files; without one, a private folder is made, and removed when gunicorn stops (a new
# master started by USR2, which inherits the old one's variable, makes its own).
def on_starting(server: Any) -> None:
    """Give the workers an empty PROMETHEUS_MULTIPROC_DIR."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if given and given != os.environ.get("SMI_METRICS_DIR_MADE"):
        os.makedirs(given, mode=0o700, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
    else:
        made = tempfile.mkdtemp(prefix="smi-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["SMI_METRICS_DIR_MADE"] = made
        server.smi_metrics_dir = made


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended: its counts stay (they are counts), its live gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the folder on_starting made."""
    made = getattr(server, "smi_metrics_dir", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


# Who the client is, is decided in one place: the app's TRUSTED_PROXY_HOPS (werkzeug's ProxyFix
# for X-Forwarded-For, -Proto and -Host). gunicorn itself would believe X-Forwarded-Proto from
# 127.0.0.1 and from any unix socket peer by default; here it believes no one, so that with
# TRUSTED_PROXY_HOPS=0 no header sent to the app can make a request look like https.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}

# Logs go to stdout and stderr (journald keeps them under systemd), in the common log format
# plus the time taken, with tokens, signatures and checkout session ids redacted. With
# LOG_FORMAT=json, gunicorn's own lines and its access lines are JSON objects, like the app's.
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'


class RedactingLogger(Logger):
    """gunicorn's logger, whose lines never show a secret (see storefront/redaction.py), in the
    LOG_FORMAT of the environment (see storefront/logs.py).

    Every atom of an access line (request line, path, query string, Referer, headers) is
    redacted before it is formatted.
    """

    def setup(self, cfg: Any) -> None:
        """gunicorn's handlers, redacting, in LOG_FORMAT."""
        super().setup(cfg)
        self.log_format = logs.environment_log_format()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.addFilter(RedactSecrets())
                    if self.log_format == "json":
                        handler.setFormatter(logs.JsonFormatter())
                        handler.addFilter(logs.AddContext())

    def atoms(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: dt.timedelta
    ) -> dict[str, object]:
        """The atoms of one access line, redacted."""
        return redact_atoms(super().atoms(resp, req, environ, request_time))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """In JSON, the access line as its message, and its parts as fields."""
        if self.log_format != "json":
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        try:
            atoms = self.atoms(resp, req, environ, request_time)
            line = self.cfg.access_log_format % self.atoms_wrapper_class(atoms)
            self.access_log.info(line, extra=logs.access_fields(atoms))
        except Exception:
            self.error(traceback.format_exc())


logger_class = RedactingLogger

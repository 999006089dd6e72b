"""The owner's admin area under /admin: sign-in, dashboard, jobs, catalog, settings, maintenance."""

from storefront.web.admin import auth, catalog, dashboard, jobs, maintenance, settings  # noqa: F401
from storefront.web.admin.base import bp

__all__ = ["bp"]

"""The owner's admin area under /admin: sign-in, dashboard, jobs, catalog, settings, maintenance."""

from storefront.admin import auth, catalog, dashboard, jobs, maintenance, settings  # noqa: F401
from storefront.admin.base import bp

__all__ = ["bp"]

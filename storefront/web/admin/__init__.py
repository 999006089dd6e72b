"""The owner's admin area under /admin: sign-in, dashboard, jobs, catalog, settings, maintenance,
system."""

from storefront.web.admin import (  # noqa: F401
    auth,
    catalog,
    dashboard,
    jobs,
    maintenance,
    settings,
    system,
)
from storefront.web.admin.base import bp

__all__ = ["bp"]

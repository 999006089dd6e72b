"""Services behind the admin area: accounts, job actions, dashboard figures, settings, audit log."""

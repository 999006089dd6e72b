"""Read-only figures for the admin area: the dashboard and the job list."""

"""Admin accounts, sign-in throttling and the audit log."""

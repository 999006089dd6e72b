"""Keeping storage and the jobs table tidy: expired files, leftovers, the archive."""

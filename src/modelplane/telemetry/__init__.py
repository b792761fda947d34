"""Metrics, system stats, structured logs and audit events (see issue 5)."""

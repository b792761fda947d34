"""The web UI. It talks only to /api/v1, like any client."""

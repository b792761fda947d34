"""The ``modelplane`` command line, built on ``modelplane.Client``."""

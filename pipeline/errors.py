"""Errors a user can act on. The CLI prints their message (which names the config key, file or
line at fault) and exits with status 2, without a traceback."""


class JobError(ValueError):
    """A job that cannot run as configured, or input it cannot use."""

"""Errors a user can act on. The CLI prints their message (which names the config key, file or
line at fault) and exits with status 2, without a traceback."""

EXIT_USER_ERROR = 2  # the exit status of a UserError: invalid config or input


class UserError(ValueError):
    """A job that cannot run as configured, or input it cannot use."""

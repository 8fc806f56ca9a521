"""Errors the CLI reports as one line (never a traceback)."""

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2."""

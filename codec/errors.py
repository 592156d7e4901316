"""The one exception for bad input or impossible options (the CLI prints it on one line and exits 2)."""


class UserError(Exception):
    """Bad input, a missing file, an impossible option: the message is one line for the user."""

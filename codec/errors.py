"""The one exception for bad input or impossible options (the CLI prints it on one line and exits 2)."""


class UserError(Exception):
    """Bad input, a missing file, an impossible option: the message is one line for the user."""


class UnverifiedOutputWarning(UserWarning):
    """A lossless output decoded from a file that carries nothing to check it against (an older pc file without
    its pixels' digest): `ncodec` prints it as one warning line."""

"""The one exception for bytes that do not parse."""


class BitstreamError(ValueError):
    """A malformed, truncated or unsupported bitstream; the message names what is wrong."""

"""ncodec's Python API: encode, decode, info, codecs (codec/api.py). `python -m ncodec` runs the CLI."""
from codec.api import codecs, decode, encode, info
from codec.zoo import names as models

__all__ = ["encode", "decode", "info", "codecs", "models"]

if __name__ == "__main__":
    import sys

    from cli.main import main

    sys.exit(main())

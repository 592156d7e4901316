"""ncodec's codecs. Importing the package silences one warning that is not ours, for every entry point."""
import warnings

# compressai scripts a few functions at import time, and torch now warns about that on every run.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

"""Test-wide settings: one torch thread per test worker (pytest-xdist runs two workers on CI's two cores)."""
import os

os.environ.setdefault("NCODEC_COMPILE", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

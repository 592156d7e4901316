"""Test-wide settings: one torch thread per test worker (pytest-xdist runs two workers on CI's two cores)."""
import os

# no torch.compile in a CUDA run of the suite (codec.device.accel_for reads it; CPU fits never compile unless a test
# asks): compiling every tiny fit would cost minutes. tests/test_gpu_path.py compiles on purpose (forced_accel, Accel).
os.environ.setdefault("NCODEC_COMPILE", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

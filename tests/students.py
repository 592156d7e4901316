"""Tiny digits teacher and students for the student/split tests (seconds on a CPU, no files needed)."""
from __future__ import annotations

from pathlib import Path

import torch

from codec.device import cpu_thread_limit
from codec.features import model_file
from codec.features import train as T
from codec.features.data import load_dataset

TINY = {"encoder_stride": 2, "latent_channels": 4, "encoder_channels": 8, "decoder_channels": 16}


def train_tiny_models(folder: Path, betas: dict[str, float]) -> Path:
    """Train teacher.safetensors and one student per name -> beta in `folder` (on 500 digits, one CPU thread)."""
    ds = load_dataset("digits", limit=500)
    with cpu_thread_limit(torch.device("cpu"), limit=1):
        T.train_teacher(ds, str(folder / "teacher.safetensors"), schedule=T.Schedule(3, 64, 0.1), device="cpu")
        teacher = model_file.load_teacher(str(folder / "teacher.safetensors"))
        for name, beta in betas.items():
            T.train_student(ds, teacher, str(folder / f"{name}.safetensors"), beta=beta,
                            stage1=T.Schedule(2, 64, 2e-3), stage2=T.Schedule(1, 64, 1e-2), student_options=TINY,
                            device="cpu")
    return folder

"""Image classification data for the teacher and the student.

A data set is held in memory as uint8 images [N, C, H, W] with integer labels and class names. Sources:
- "digits": scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network, no ../shared);
- a .tar.gz of JPEG/PNG files laid out as <anything>/<class name>/<file> (the CIFAR-10 archives);
- an ImageFolder tree: DIR/<class name>/<image file> (deeper files take the folder they sit in as their class).
Archives and folders are read by codec/features/collection.py, the reader `encode` and `split` use too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from codec.errors import UserError
from codec.features.collection import Collection, is_archive, read_collection


@dataclass
class ImageSet:
    images: torch.Tensor      # uint8 [N, C, H, W]
    labels: torch.Tensor      # int64 [N]
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.classes, self.name)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])


def load_dataset(spec: str, limit: int | None = None, channels: int | None = None) -> ImageSet:
    """'digits', a .tar.gz of class folders, or an ImageFolder tree; `limit` keeps a class-balanced prefix."""
    if spec == "digits":
        ds = _digits()
    elif (os.path.isfile(spec) and is_archive(spec)) or os.path.isdir(spec):
        ds = _labelled(spec, channels)
    elif not os.path.exists(spec):
        raise UserError(f"data {spec!r} not found (use 'digits', a .tar.gz of class folders or an image folder)")
    else:
        raise UserError(f"data {spec!r} is neither 'digits', a .tar.gz of class folders nor an image folder")
    if limit is not None and limit < len(ds):
        ds = ds.subset(balanced_prefix(ds.labels, limit))
    return ds


def balanced_prefix(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of n items taken round-robin over the classes, in order (a deterministic class-balanced subset)."""
    per_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    order = []
    for k in range(max(len(p) for p in per_class)):
        order += [int(p[k]) for p in per_class if k < len(p)]
    return torch.tensor(sorted(order[:n]), dtype=torch.long)


def split_holdout(ds: ImageSet, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A fixed random split into (train, held-out); the same seed always gives the same split."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=g)
    n_hold = max(1, int(round(len(ds) * fraction)))
    return ds.subset(perm[n_hold:].sort().values), ds.subset(perm[:n_hold].sort().values)


def _digits() -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    # values are 0..16; stretch to 0..255 so that they are ordinary 8-bit grey images
    img = np.round(d.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return ImageSet(torch.from_numpy(img[:, None]), torch.from_numpy(d.target.astype(np.int64)),
                    [str(i) for i in range(10)], "digits")


def _labelled(spec: str, channels: int | None) -> ImageSet:
    """A training set from the shared reader (codec/features/collection.py): the images inside class folders."""
    found = read_collection(spec)
    items = [it for it in found.items if it.nested]
    if not items:
        raise UserError(f"{spec}: no images found under class folders")
    classes = sorted({it.folder for it in items})
    index = {c: i for i, c in enumerate(classes)}
    pixels = Collection(items).pixels(channels)
    return ImageSet(pixels, torch.tensor([index[it.folder] for it in items], dtype=torch.long), classes,
                    os.path.basename(spec.rstrip("/")))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [0, 1]."""
    return images.float().div_(255.0)


def augment(x: torch.Tensor, flip: bool, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip for natural images (not for digits)."""
    n, _, h, w = x.shape
    if pad:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)          # [n, h]
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)          # [n, w]
        idx_n = torch.arange(n, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()

"""Image classification data for the teacher and the student, and image files for `encode`/`split send`.

A data set is held in memory as uint8 images [N, C, H, W] with integer labels and class names. Sources:
- "digits": scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network, no ../shared);
- a .tar.gz of JPEG/PNG files laid out as <anything>/<class name>/<file> (the CIFAR-10 archives);
- an ImageFolder tree: DIR/<class name>/<image file>.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from codec.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


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
    elif os.path.isfile(spec) and spec.endswith((".tar.gz", ".tgz", ".tar")):
        ds = _tar_images(spec, channels)
    elif os.path.isdir(spec):
        ds = _folder_images(spec, channels)
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


def _to_array(img: Image.Image, channels: int | None) -> np.ndarray:
    if channels is None:
        channels = 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
    img = img.convert("L" if channels == 1 else "RGB")
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _stack(arrays: list[np.ndarray], names: list[str], where: str) -> torch.Tensor:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        first = arrays[0].shape
        odd = next(n for a, n in zip(arrays, names) if a.shape != first)
        raise UserError(f"{where}: images differ in size ({odd} is {arrays[names.index(odd)].shape[1:]}, "
                        f"{names[0]} is {first[1:]}); resize them to one size first")
    return torch.from_numpy(np.stack(arrays))


def _labelled(files: list[tuple[str, str, bytes | None]], where: str, channels: int | None,
              opener) -> ImageSet:
    classes = sorted({c for c, _, _ in files})
    if not files:
        raise UserError(f"{where}: no images found under class folders")
    index = {c: i for i, c in enumerate(classes)}
    arrays, labels, names = [], [], []
    for cls, name, blob in files:
        try:
            arrays.append(_to_array(opener(name, blob), channels))
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{where}: cannot read image {name} ({e})") from None
        if channels is None:
            channels = arrays[0].shape[0]
        labels.append(index[cls])
        names.append(name)
    return ImageSet(_stack(arrays, names, where), torch.tensor(labels, dtype=torch.long), classes,
                    os.path.basename(where.rstrip("/")))


def _tar_images(path: str, channels: int | None) -> ImageSet:
    files = []
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile() or not m.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                parts = Path(m.name).parts
                if len(parts) < 2:
                    continue
                f = tar.extractfile(m)
                files.append((parts[-2], m.name, f.read() if f else b""))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{path}: not a readable tar archive ({e})") from None
    files.sort(key=lambda t: t[1])
    return _labelled(files, path, channels, lambda name, blob: Image.open(io.BytesIO(blob)))


def _folder_images(root: str, channels: int | None) -> ImageSet:
    files = []
    for cls in sorted(os.listdir(root)):
        d = os.path.join(root, cls)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            if fn.lower().endswith(IMAGE_SUFFIXES):
                files.append((cls, os.path.join(d, fn), None))
    return _labelled(files, root, channels, lambda name, blob: Image.open(name))


def expand_inputs(inputs: list[str]) -> list[str]:
    """Image paths from files and folders (folders are searched recursively, in sorted order)."""
    out = []
    for p in inputs:
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise UserError(f"input {p} not found")
    if not out:
        raise UserError("no image files among the inputs")
    return out


def load_images(paths: list[str], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Image files as uint8 [N, C, H, W]; a file of another size than the model's is refused, never resized."""
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as img:
                if (img.height, img.width) != tuple(size):
                    raise UserError(f"{p} is {img.width}x{img.height} pixels but the model takes "
                                    f"{size[1]}x{size[0]} images")
                arrays.append(_to_array(img, channels))
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"cannot read image {p}: {e}") from None
    return torch.from_numpy(np.stack(arrays))


def label_from_path(path: str, classes: list[str]) -> int | None:
    """The true class when the file sits in a folder named after one (ImageFolder / CIFAR layout), else None."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return classes.index(parent) if parent in classes else None


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

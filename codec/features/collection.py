"""Image collections: the one reader of image files, folders of class subfolders and tar archives.

`ncodec encode --codec student`, `ncodec split send`, `ncodec split demo --images` and the training data sets
(`load_dataset`) all read their images here. Every image gets a name relative to its input's root ('/'-separated:
`cat/0001.png` for IMAGES/cat/0001.png, the member path inside an archive, the base name of a file given by name) and
the name of the folder it sits in, its class when that folder is named after one of the model's classes.

Archives are read member by member in memory, never extracted: only regular files (no links, devices or
directories), no absolute or `..` names, and bounded entry counts and sizes. Names are checked by `check_name`, the
same rule a student file's stored names are checked with when it is decoded.
"""
from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from codec.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_NAME_BYTES = 1024            # one stored name, UTF-8; far above any real relative path
MAX_IMAGES = 1_000_000           # images in one collection
MAX_ENTRIES = 500_000            # archive entries looked at: tarfile keeps every entry's header in memory
MAX_MEMBER_BYTES = 64 << 20      # one image inside an archive
MAX_IMAGE_BYTES = 1 << 30        # image bytes held from one archive in all
MAX_ARCHIVE_BYTES = 16 << 30     # bytes every entry of an archive declares: bounds the time a bomb can take
# what Pillow raises on damaged files besides OSError (struct and index errors from truncated headers, ...)
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


def check_name(name: str) -> str | None:
    """Why `name` is not a safe relative image name ('/'-separated, no '..', not absolute), or None if it is."""
    if not name:
        return "an empty name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"a name longer than {MAX_NAME_BYTES} bytes"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "a name with control characters"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):      # os.fsdecode's stand-ins for bytes that are not UTF-8
        return "a name that is not valid UTF-8"
    if name.startswith("/") or "\\" in name:
        return "an absolute name or one with backslashes"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a name with an empty, '.' or '..' component"
    return None


@dataclass(frozen=True)
class Item:
    """One image of a collection: a file on disk (`path`) or an archive member's bytes (`data`)."""

    name: str               # relative to its input's root, '/'-separated: what reports and files record
    folder: str | None      # the folder it sits in (its class when named after one); None at an archive's top
    nested: bool            # inside a subfolder of its input (a training set's images must be)
    where: str              # for messages: the path on disk, or ARCHIVE:MEMBER
    path: str | None = None
    data: bytes | None = None

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.path)

    def open(self) -> Image.Image:
        return Image.open(self.path) if self.data is None else Image.open(io.BytesIO(self.data))


class Collection:
    """The images of one or more inputs, in a fixed order."""

    def __init__(self, items: list[Item]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [it.name for it in self.items]

    def file_bytes(self) -> int:
        """The images' bytes as stored (the JPEG or PNG files)."""
        return sum(it.nbytes for it in self.items)

    def labels(self, classes: list[str]) -> list[int | None]:
        """Each image's class index when its folder is named after one of `classes`, else None."""
        index = {c: i for i, c in enumerate(classes)}
        return [index.get(it.folder) for it in self.items]

    def balanced(self, n: int) -> "Collection":
        """At most n images, taken round-robin over the folders (every class shows up), in the original order."""
        if n >= len(self.items):
            return self
        groups: dict[str | None, list[int]] = {}
        for i, it in enumerate(self.items):
            groups.setdefault(it.folder, []).append(i)
        picked, k = [], 0
        while len(picked) < n:
            picked += [g[k] for g in groups.values() if k < len(g)][:n - len(picked)]
            k += 1
        return Collection([self.items[i] for i in sorted(picked)])

    def pixels(self, channels: int | None = None, size: tuple[int, int] | None = None,
               desc: str = "reading images") -> torch.Tensor:
        """uint8 [N, C, H, W]. `size` (H, W): every image must have it (a model's input; never resized), checked
        before its pixels are decoded; None: all images must share one size. `channels` None: the first image's
        (1 for grey, else 3)."""
        from codec.progress import progress

        arrays = []
        for it in progress(self.items, desc=desc, unit="img", leave=False):
            try:
                with it.open() as img:
                    if size is not None and (img.height, img.width) != tuple(size):
                        raise UserError(f"{it.where} is {img.width}x{img.height} pixels but the model takes "
                                        f"{size[1]}x{size[0]} images")
                    arrays.append(to_array(img, channels))
            except _IMAGE_ERRORS as e:
                raise UserError(f"cannot read image {it.where}: {_reason(e)}") from None
            if channels is None:
                channels = arrays[0].shape[0]
            if size is None and arrays[-1].shape != arrays[0].shape:
                raise UserError(f"images differ in size ({it.where} is {arrays[-1].shape[2]}x{arrays[-1].shape[1]},"
                                f" {self.items[0].where} is {arrays[0].shape[2]}x{arrays[0].shape[1]}); resize "
                                f"them to one size first")
        return torch.from_numpy(np.stack(arrays))


def to_array(img: Image.Image, channels: int | None) -> np.ndarray:
    """A Pillow image as uint8 [C, H, W], grey (C = 1) or RGB (C = 3); `channels` None: grey stays grey."""
    if channels is None:
        channels = 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
    img = img.convert("L" if channels == 1 else "RGB")
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def read_collection(inputs: str | os.PathLike | list, on_item: Callable[[Item], None] | None = None) -> Collection:
    """Image files, folders (searched recursively: FOLDER/<class>/<image>) and tar archives of such folders.

    Inside folders and archives only files with an image suffix count; a file given by name is read whatever
    its suffix. Missing inputs, archives that are not readable, unsafe member names and inputs without images are
    one-line UserErrors."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not inputs:
        raise UserError("no images given")
    items: list[Item] = []
    for p in (os.fspath(x) for x in inputs):
        if os.path.isdir(p):
            found = _folder(p)
        elif os.path.isfile(p) and is_archive(p):
            found = _archive(p)
        elif os.path.isfile(p):
            found = [_file(p)]
        else:
            raise UserError(f"input {p} not found")
        if not found:
            raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {p}")
        items += found
        if len(items) > MAX_IMAGES:
            raise UserError(f"more than {MAX_IMAGES:,} images: give fewer inputs")
    return Collection(items)


def _named(name: str, where: str) -> str:
    problem = check_name(name)
    if problem is not None:
        raise UserError(f"{where}: {problem} cannot be recorded ({name!r})")
    return name


def _file(path: str) -> Item:
    folder = os.path.basename(os.path.dirname(os.path.abspath(path))) or None
    return Item(_named(os.path.basename(path), path), folder, False, path, path=path)


def _folder(root: str) -> list[Item]:
    """Sorted walk (folders, then files, by name); symbolic links to folders are not followed."""
    top = os.path.basename(os.path.abspath(root)) or None
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for f in sorted(filenames):
            path = os.path.join(dirpath, f)
            if not f.lower().endswith(IMAGE_SUFFIXES) or not os.path.isfile(path):   # FIFOs, sockets, dead links
                continue
            name = f if rel == "." else "/".join((*rel.split(os.sep), f))
            folder = top if rel == "." else os.path.basename(dirpath)
            items.append(Item(_named(name, path), folder, rel != ".", path, path=path))
            if len(items) > MAX_IMAGES:
                raise UserError(f"{root}: more than {MAX_IMAGES:,} images")
    return items


def _archive(path: str) -> list[Item]:
    """Regular image members, sorted by name, read into memory under the bounds above."""
    items, entries, declared, held = [], 0, 0, 0
    try:
        with tarfile.open(path, "r:*") as tar:
            while (m := tar.next()) is not None:
                entries += 1
                declared += max(m.size, 0)
                if entries > MAX_ENTRIES:
                    raise UserError(f"{path}: more than {MAX_ENTRIES:,} archive entries")
                if declared > MAX_ARCHIVE_BYTES:
                    raise UserError(f"{path}: the archive declares more than {MAX_ARCHIVE_BYTES >> 30} GiB")
                if not m.isreg() or not m.name.lower().endswith(IMAGE_SUFFIXES):   # links, folders, devices, ...
                    continue
                parts = [q for q in m.name.split("/") if q not in ("", ".")]
                if m.name.startswith("/") or ".." in parts:
                    raise UserError(f"{path}: unsafe member name {m.name!r} (absolute or with '..')")
                where = f"{path}:{m.name}"
                if m.size > MAX_MEMBER_BYTES:
                    raise UserError(f"{where}: an image of {m.size:,} bytes (at most {MAX_MEMBER_BYTES:,})")
                held += m.size
                if held > MAX_IMAGE_BYTES:
                    raise UserError(f"{path}: more than {MAX_IMAGE_BYTES >> 30} GiB of images; split the archive")
                f = tar.extractfile(m)
                data = f.read(m.size) if f is not None else b""
                if len(data) != m.size:
                    raise UserError(f"{where}: the archive ends inside this image")
                name = _named("/".join(parts), where)
                items.append(Item(name, parts[-2] if len(parts) > 1 else None, len(parts) > 1, where, data=data))
    except tarfile.ReadError:           # its text lists every decompressor tried: too long for one line
        raise UserError(f"{path}: not a tar archive, or a damaged one") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{path}: not a readable tar archive ({_reason(e)})") from None
    items.sort(key=lambda it: it.name)
    return items


def _reason(e: BaseException) -> str:
    """An exception as a short single line."""
    text = " ".join(str(e).split())[:200]
    return text or type(e).__name__

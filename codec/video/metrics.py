"""Video quality and rate as the papers report them: RGB PSNR and MS-SSIM per frame, averaged over frames; bpp;
and the video-coding papers' Y-PSNR and YUV-PSNR (6:1:1) beside them (psnr_yuv).

Inputs are RGB frames [T, H, W, 3] (or one frame [H, W, 3]), uint8 (peak 255) or float in [0, 1] (peak 1). When one
side is uint8 and the other float, the uint8 side is divided by 255.

PSNR of identical frames is +inf, and the mean over frames is the plain arithmetic mean (so +inf if any frame is
exact), as in the papers, which cap nothing. Pass max_db (e.g. 100) to cap each frame instead.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from codec.errors import UserError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, pytorch_msssim's default


def _as_clips(ref, dist) -> tuple[np.ndarray, np.ndarray, float]:
    """Two [T, H, W, 3] arrays of the same dtype family, and the peak value."""
    a, b = np.asarray(ref), np.asarray(dist)
    if a.ndim == 3 and b.ndim == 3:
        a, b = a[None], b[None]
    if a.shape != b.shape:
        raise UserError(f"shapes differ: reference {tuple(a.shape)} vs distorted {tuple(b.shape)}")
    if a.ndim != 4 or a.shape[-1] != 3:
        raise UserError(f"expected RGB frames [T, H, W, 3], got shape {tuple(a.shape)}")
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        return a, b, 255.0
    for x in (a, b):
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"frames must be uint8 or float in [0, 1], got {x.dtype}")
    return a, b, 1.0


def _frame_mse(a: np.ndarray, b: np.ndarray) -> float:
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        d = (a.astype(np.int64) - b).ravel()  # exact integer sum of squares
        return float(np.dot(d, d)) / d.size
    fa = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    fb = b.astype(np.float64) / 255.0 if b.dtype == np.uint8 else b.astype(np.float64)
    return float(np.mean((fa - fb) ** 2))


def psnr(ref, dist, max_db: float | None = None) -> tuple[float, np.ndarray]:
    """(mean over frames of the per-frame RGB PSNR in dB, the per-frame values [T] float64)."""
    a, b, peak = _as_clips(ref, dist)
    per_frame = np.empty(a.shape[0], np.float64)
    for t in range(a.shape[0]):  # one frame at a time: a float64 copy of a whole 720p clip would be gigabytes
        mse = _frame_mse(a[t], b[t])
        per_frame[t] = 10.0 * math.log10(peak * peak / mse) if mse > 0 else math.inf
    if max_db is not None:
        per_frame = np.minimum(per_frame, max_db)
    return float(per_frame.mean()), per_frame


# RGB -> Y'CbCr rows (full range: Y, Cb and Cr each span the whole 0..peak, so one peak serves all three planes)
YUV_MATRICES = {
    "bt601": np.array([[0.299, 0.587, 0.114],
                       [-0.168735892, -0.331264108, 0.5],
                       [0.5, -0.418687589, -0.081312411]]),
    "bt709": np.array([[0.2126, 0.7152, 0.0722],
                       [-0.114572106, -0.385427894, 0.5],
                       [0.5, -0.454152908, -0.045847092]]),
}


def psnr_yuv(ref, dist, matrix: str = "bt601", max_db: float | None = None) -> dict[str, float]:
    """Y, U and V PSNR and YUV-PSNR = (6 Y + U + V) / 8 in dB (each the mean over frames of the per-frame value).

    The planes are computed from the RGB frames in float64 with `matrix` in full range (BT.601 by default, as JPEG
    and JFIF define it; "bt709" for HD-tagged sources), with no rounding and no chroma subsampling, so the numbers
    compare codecs on the same RGB frames; they are not those of a YUV 4:2:0 file's own planes. The offsets of Cb
    and Cr cancel in the differences, so only the matrix matters. Identical frames give +inf as in `psnr`."""
    if matrix not in YUV_MATRICES:
        raise UserError(f"unknown YUV matrix {matrix!r}; choose one of {', '.join(YUV_MATRICES)}")
    a, b, peak = _as_clips(ref, dist)
    m = YUV_MATRICES[matrix]
    per_frame = np.empty((a.shape[0], 3), np.float64)
    for t in range(a.shape[0]):  # one frame at a time, as in `psnr`
        fa = a[t].astype(np.float64) / (255.0 if a.dtype == np.uint8 and peak == 1.0 else 1.0)
        fb = b[t].astype(np.float64) / (255.0 if b.dtype == np.uint8 and peak == 1.0 else 1.0)
        diff = (fa - fb).reshape(-1, 3) @ m.T                 # [pixels, (Y, Cb, Cr)]
        mse = np.mean(diff * diff, axis=0)
        with np.errstate(divide="ignore"):
            per_frame[t] = np.where(mse > 0, 10.0 * np.log10(peak * peak / np.maximum(mse, 1e-300)), math.inf)
    if max_db is not None:
        per_frame = np.minimum(per_frame, max_db)
    y, u, v = per_frame.mean(axis=0)
    return {"psnr_y": float(y), "psnr_u": float(u), "psnr_v": float(v), "psnr_yuv": float((6 * y + u + v) / 8)}


def ms_ssim_config(height: int, width: int) -> tuple[str, int]:
    """("ms-ssim" or "ssim", Gaussian window size) used for frames of this size.

    pytorch_msssim needs the shorter side > (win - 1) * 16 for its 5 scales: 161 px with the standard 11-tap window.
    Smaller frames keep the 5 scales and their weights and use the largest odd window that fits (carphone's 144 rows:
    9 taps, within about 1e-3 of the 11-tap value); below 33 px no window fits and single-scale SSIM is used instead.
    """
    side = min(height, width)
    for win in (11, 9, 7, 5, 3):
        if side > (win - 1) * 16:
            return "ms-ssim", win
    if side < 3:
        raise UserError(f"frames of {height}x{width} are too small for SSIM")
    return "ssim", min(11, side if side % 2 else side - 1)


def ms_ssim_per_frame(ref, dist, batch: int | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """Per-frame RGB MS-SSIM [T] (pytorch_msssim, Gaussian window sigma 1.5), computed a few frames at a time."""
    from pytorch_msssim import ms_ssim as _ms_ssim, ssim as _ssim

    a, b, peak = _as_clips(ref, dist)
    T, H, W, _ = a.shape
    kind, win = ms_ssim_config(H, W)
    if batch is None:  # about 8M values per side per batch: tens of MB of float32 intermediates
        batch = max(1, 8_000_000 // (H * W * 3))
    out = np.empty(T, np.float64)
    with torch.no_grad():
        for s in range(0, T, batch):
            x = _to_tensor(a[s:s + batch], peak, device)
            y = _to_tensor(b[s:s + batch], peak, device)
            if kind == "ms-ssim":
                v = _ms_ssim(x, y, data_range=peak, size_average=False, win_size=win, weights=list(MS_SSIM_WEIGHTS))
            else:
                v = _ssim(x, y, data_range=peak, size_average=False, win_size=win)
            out[s:s + batch] = v.double().cpu().numpy()
    return out


def ms_ssim(ref, dist, batch: int | None = None, device: str | torch.device = "cpu") -> float:
    """Mean over frames of the RGB MS-SSIM (see ms_ssim_per_frame and ms_ssim_config)."""
    return float(ms_ssim_per_frame(ref, dist, batch, device).mean())


def _to_tensor(frames: np.ndarray, peak: float, device) -> torch.Tensor:
    """[N, H, W, 3] -> float32 [N, 3, H, W] on `device` in 0..peak (uint8 beside float input is divided by 255)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    return x / 255.0 if frames.dtype == np.uint8 and peak == 1.0 else x


def bpp(num_bytes: int, frames: int, height: int, width: int) -> float:
    """Bits per pixel of a whole file: bytes x 8 / (frames x height x width)."""
    if num_bytes < 0 or frames <= 0 or height <= 0 or width <= 0:
        raise UserError(f"bpp needs bytes >= 0 and a positive frame count and size, got "
                        f"{num_bytes} bytes, {frames} frames of {height}x{width}")
    return num_bytes * 8.0 / (frames * height * width)

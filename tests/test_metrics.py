"""PSNR, MS-SSIM and bpp against their definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec.errors import UserError
from codec.video import metrics
from tests.videos import moving_gradients


def test_psnr_of_known_errors_matches_the_formula():
    ref = np.full((4, 16, 24, 3), 100, np.uint8)
    dist = ref.copy()
    for t in range(4):
        dist[t] += t + 1  # every value off by t+1: MSE = (t+1)^2
    mean, per_frame = metrics.psnr(ref, dist)
    expected = [10 * math.log10(255 ** 2 / (t + 1) ** 2) for t in range(4)]
    np.testing.assert_allclose(per_frame, expected, rtol=0, atol=1e-12)
    assert mean == pytest.approx(np.mean(expected), abs=1e-12)  # mean of per-frame PSNR, not PSNR of mean MSE


def test_psnr_of_random_noise_and_float_inputs():
    rng = np.random.default_rng(1)
    ref = moving_gradients(frames=3)
    noisy = np.clip(ref.astype(int) + rng.integers(-6, 7, ref.shape), 0, 255).astype(np.uint8)
    mean, per_frame = metrics.psnr(ref, noisy)
    direct = [10 * np.log10(255 ** 2 / np.mean((ref[t].astype(float) - noisy[t]) ** 2)) for t in range(3)]
    np.testing.assert_allclose(per_frame, direct, rtol=1e-12)
    assert 30 < mean < 40
    f_ref, f_noisy = ref / 255.0, noisy / 255.0  # float in [0, 1] uses peak 1: the same dB
    np.testing.assert_allclose(metrics.psnr(f_ref, f_noisy)[1], per_frame, rtol=1e-9)
    np.testing.assert_allclose(metrics.psnr(ref, f_noisy)[1], per_frame, rtol=1e-9)  # uint8 beside float
    assert metrics.psnr(ref[0], noisy[0])[0] == pytest.approx(per_frame[0])  # a single [H, W, 3] frame


def test_psnr_of_identical_frames_is_infinite_unless_capped():
    ref = moving_gradients(frames=3)
    dist = ref.copy()
    dist[1, 0, 0, 0] ^= 1
    mean, per_frame = metrics.psnr(ref, dist)
    assert math.isinf(per_frame[0]) and math.isinf(per_frame[2]) and math.isfinite(per_frame[1])
    assert math.isinf(mean)
    capped_mean, capped = metrics.psnr(ref, dist, max_db=100.0)
    assert capped[0] == 100.0 and capped[1] == per_frame[1] and capped_mean == pytest.approx((200 + per_frame[1]) / 3)


def test_psnr_refuses_mismatched_shapes():
    with pytest.raises(UserError):
        metrics.psnr(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 9, 3), np.uint8))
    with pytest.raises(UserError):
        metrics.psnr(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8))


def test_ms_ssim_of_identical_is_one_and_falls_with_noise():
    ref = moving_gradients(frames=3)
    assert metrics.ms_ssim(ref, ref) == pytest.approx(1.0, abs=1e-5)
    rng = np.random.default_rng(3)
    values = []
    for sigma in (2, 8, 24):
        noisy = np.clip(ref + rng.normal(0, sigma, ref.shape), 0, 255).astype(np.uint8)
        values.append(metrics.ms_ssim(ref, noisy))
        per_frame = metrics.ms_ssim_per_frame(ref, noisy, batch=2)  # batching does not change the values
        assert per_frame.shape == (3,) and per_frame.mean() == pytest.approx(values[-1], abs=1e-6)
    assert 1.0 > values[0] > values[1] > values[2] > 0.0


def test_ms_ssim_matches_pytorch_msssim_at_full_size():
    from pytorch_msssim import ms_ssim

    rng = np.random.default_rng(4)
    ref = rng.integers(0, 256, (2, 176, 192, 3), dtype=np.uint8)  # shorter side 176 > 160: the standard setting
    dist = np.clip(ref + rng.normal(0, 10, ref.shape), 0, 255).astype(np.uint8)
    x = torch.from_numpy(ref).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(dist).permute(0, 3, 1, 2).float()
    expected = ms_ssim(x, y, data_range=255, size_average=False).numpy()
    np.testing.assert_allclose(metrics.ms_ssim_per_frame(ref, dist), expected, rtol=1e-6)
    np.testing.assert_allclose(metrics.ms_ssim_per_frame(ref / 255.0, dist / 255.0), expected, rtol=1e-4)


def test_ms_ssim_config_for_small_frames():
    assert metrics.ms_ssim_config(720, 1280) == ("ms-ssim", 11)
    assert metrics.ms_ssim_config(161, 300) == ("ms-ssim", 11)
    assert metrics.ms_ssim_config(144, 176) == ("ms-ssim", 9)  # carphone
    assert metrics.ms_ssim_config(48, 64) == ("ms-ssim", 3)
    assert metrics.ms_ssim_config(20, 30) == ("ssim", 11)
    assert metrics.ms_ssim_config(8, 30) == ("ssim", 7)
    with pytest.raises(UserError):
        metrics.ms_ssim_config(2, 30)
    tiny = moving_gradients(frames=2, height=24, width=32)  # single-scale SSIM path
    assert metrics.ms_ssim(tiny, tiny) == pytest.approx(1.0, abs=1e-5)


def test_bpp_arithmetic():
    assert metrics.bpp(1000, 10, 100, 80) == pytest.approx(0.1)
    assert metrics.bpp(0, 1, 1, 1) == 0.0
    assert metrics.bpp(92_160, 120, 144, 176) == pytest.approx(92_160 * 8 / (120 * 144 * 176))
    for bad in [(-1, 1, 1, 1), (10, 0, 1, 1), (10, 1, 0, 1), (10, 1, 1, 0)]:
        with pytest.raises(UserError):
            metrics.bpp(*bad)

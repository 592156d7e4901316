"""The shared INR fitting loop: it improves, it stops on time, it resumes, it is reproducible, it reports."""
import math
import os

import pytest
import torch

from codec.errors import UserError
import codec.device
import codec.fit
from codec.fit import FitConfig, epoch_order, fit
from codec.schedule import warmup_cosine
from codec.video.hnerv import HNeRV, hnerv_config
from tests.videos import moving_gradients

T, H, W = 4, 32, 48


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return HNeRV(hnerv_config(H, W, T, 60_000))


@pytest.fixture(scope="module")
def clip():
    return moving_gradients(T, H, W)


def model_psnr(model, clip):
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        mse = torch.mean((model(torch.arange(T), x) - x) ** 2).item()
    return -10 * math.log10(mse)


def test_short_fit_improves_psnr(clip):
    model = tiny_model()
    before = model_psnr(model, clip)
    res = fit(model, clip, FitConfig(epochs=15, batch_size=2, lr=3e-3, device="cpu", log_every=5))
    after = model_psnr(model, clip)
    assert res.steps == 15 * 2 and res.stopped_by == "epochs"
    assert after > before + 3, (before, after)
    assert res.history and res.history[-1]["step"] == res.steps


def test_max_time_stops_on_time(clip):
    res = fit(tiny_model(), clip, FitConfig(epochs=100_000, max_time=0.5, device="cpu"))
    assert res.stopped_by == "max_time"
    assert 0 < res.steps < 100_000 * 2
    assert res.seconds >= 0.5


def test_needs_a_budget(clip):
    with pytest.raises(UserError):
        fit(tiny_model(), clip, FitConfig(device="cpu"))


def test_fit_is_reproducible(clip):
    states = []
    for _ in range(2):
        m = tiny_model(seed=3)
        fit(m, clip, FitConfig(epochs=2, device="cpu", seed=5))
        states.append(m.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_resume_continues_a_checkpoint(clip, tmp_path):
    prefix = str(tmp_path / "run.ckpt")
    fp = {"what": "tiny"}
    a = tiny_model(seed=1)
    fit(a, clip, FitConfig(epochs=2, device="cpu", checkpoint=prefix, fingerprint=fp))
    assert os.path.exists(prefix + ".safetensors")
    # a fresh model (other init) resumed with the same budget does no step and ends as the checkpoint
    b = tiny_model(seed=2)
    res = fit(b, clip, FitConfig(epochs=2, device="cpu", checkpoint=prefix, fingerprint=fp, resume=True))
    assert res.steps == 4
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # a longer budget continues from step 4
    res = fit(b, clip, FitConfig(epochs=3, device="cpu", checkpoint=prefix, fingerprint=fp, resume=True))
    assert res.steps == 6 and not torch.equal(b.state_dict()["decoder.stem.weight"], a.state_dict()["decoder.stem.weight"])
    # a checkpoint of another run is refused
    with pytest.raises(UserError, match="another"):
        fit(tiny_model(), clip, FitConfig(epochs=3, device="cpu", checkpoint=prefix, fingerprint={"x": 1}, resume=True))


def test_schedule_and_order():
    assert warmup_cosine(0.0, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0.1, 1.0, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(1.0, 1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    order = epoch_order(5, 2, seed=0, epoch=3)
    assert order.shape == (3, 2) and set(order.flatten().tolist()) == set(range(5))
    assert torch.equal(order, epoch_order(5, 2, seed=0, epoch=3))


def test_cpu_threads_override(monkeypatch):
    from codec.device import cpu_threads

    monkeypatch.setenv("NCODEC_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.delenv("NCODEC_THREADS")
    assert 1 <= cpu_threads() <= torch.get_num_threads()
    monkeypatch.setattr(codec.device, "_load_average", lambda: 1e9)      # oversubscribed: one thread
    assert cpu_threads(4) == 1
    monkeypatch.setattr(codec.device, "_load_average", lambda: 0.0)
    assert cpu_threads(4) == 4
    monkeypatch.setattr(codec.device, "_load_average", lambda: None)     # no load average on this platform
    assert cpu_threads(4) == 4


def test_fit_rechecks_threads_and_restores_them(clip, monkeypatch):
    """The machine gets busy, then idle again, during a fit: the loop follows, and the caller's count comes back."""
    monkeypatch.delenv("NCODEC_THREADS", raising=False)
    monkeypatch.setattr(codec.fit, "THREAD_CHECK_EVERY", 0.0)             # re-check before every step
    load = {"now": 0.0}
    monkeypatch.setattr(codec.device, "_load_average", lambda: load["now"])
    seen = []

    def on_progress(info):
        seen.append(torch.get_num_threads())
        load["now"] = 1e9 if len(seen) == 1 else 0.0       # busy after the first read-back, idle after the second

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(tiny_model(), clip, FitConfig(epochs=2, device="cpu", log_every=1, show_bar=False,
                                          on_progress=on_progress))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen[:3] == [2, 1, 2], seen


def test_on_progress_reports_every_read_back_and_the_end(clip):
    reports = []
    res = fit(tiny_model(), clip, FitConfig(epochs=3, device="cpu", log_every=2, desc="tiny", show_bar=False,
                                            on_progress=reports.append))
    assert [r["step"] for r in reports] == [2, 4, 6, 6] and [r["done"] for r in reports] == [False] * 3 + [True]
    last = reports[-1]
    assert last["desc"] == "tiny" and last["total_steps"] == 6 and last["epochs"] == 3 and last["epoch"] == 3
    assert last["psnr"] == res.psnr and last["elapsed"] > 0 and last["steps_per_s"] > 0
    # a run bounded by time alone has no step total
    timed = []
    fit(tiny_model(), clip, FitConfig(max_time=0.2, device="cpu", show_bar=False, on_progress=timed.append))
    assert timed[-1]["done"] and timed[-1]["total_steps"] is None and timed[-1]["epochs"] is None


@pytest.mark.parametrize("show_bar", [True, False])
def test_show_bar_turns_the_local_bar_off(clip, capsys, monkeypatch, show_bar):
    monkeypatch.setenv("NCODEC_PROGRESS", "1")                           # a bar even without a terminal
    fit(tiny_model(), clip, FitConfig(epochs=1, device="cpu", desc="tinyfit", show_bar=show_bar))
    assert ("tinyfit" in capsys.readouterr().err) == show_bar


def _blow_up_at(model, step):
    """on_progress that wrecks the weights once, at `step` (a learning rate's blow-up, made deterministic)."""
    def hook(info):
        if info["step"] == step and not info["done"]:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(-20.0)
    return hook


@pytest.mark.parametrize("guard", [False, True])
def test_the_guard_undoes_a_diverged_epoch(clip, guard):
    model = tiny_model()
    cfg = FitConfig(epochs=20, batch_size=2, lr=3e-3, device="cpu", log_every=2, guard=guard, show_bar=False)
    cfg.on_progress = _blow_up_at(model, 20)             # the end of epoch 10 of 20 (2 steps per epoch)
    res = fit(model, clip, cfg)
    clean = tiny_model()
    fit(clean, clip, FitConfig(epochs=20, batch_size=2, lr=3e-3, device="cpu", log_every=2, show_bar=False))
    if guard:
        # the wrecked epoch is undone: back to the best weights, then on at half the learning rate
        assert res.recoveries == 1
        assert model_psnr(model, clip) > model_psnr(clean, clip) - 3
    else:
        assert res.recoveries == 0
        assert model_psnr(model, clip) < model_psnr(clean, clip) - 3


def test_the_guard_changes_nothing_when_nothing_diverges(clip):
    a, b = tiny_model(), tiny_model()
    ra = fit(a, clip, FitConfig(epochs=6, batch_size=2, lr=3e-3, device="cpu", show_bar=False))
    rb = fit(b, clip, FitConfig(epochs=6, batch_size=2, lr=3e-3, device="cpu", show_bar=False, guard=True))
    assert rb.recoveries == 0 and ra.psnr == rb.psnr
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

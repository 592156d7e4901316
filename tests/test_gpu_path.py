"""The GPU path, run on the CPU (issue 31): every device-specific choice of a fit and a decode is a
`codec.device.Accel`, so these tests run a CUDA run's options (bf16 autocast, channels_last, torch.compile, fused
Adam, TF32 and cuDNN flags, fp16 decoding) through the same functions a CUDA run uses; plus the decode settings,
the compile fallback and budget, fp16 overflow, leaks of global torch state, and two blind spots of the other tests
(a damaged optional section, rounding of decoded frames)."""
import functools
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import codec.fit as codec_fit
from bitstream.container import Reader
from cli.main import main
from codec import registry
from codec.api import encode_file
from codec.base import decode_settings, frames_digest, to_uint8_frames
from codec.device import Accel, accel_for, compiled, forced_accel, precision_label
from codec.fit import FitConfig, fit
from codec.video import nirvana
from tests.videos import moving_gradients

T, H, W = 6, 32, 48
FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
# what a CUDA run gets from accel_for, compile aside (one compile test below; NCODEC_COMPILE=0 in conftest)
CUDA_PROFILE = dict(autocast=torch.bfloat16, channels_last=True, fused_adam=True, tf32=True, cudnn_benchmark=True,
                    decode_dtype=torch.float16)
TINY = {  # codec -> options of a tiny encode
    "hnerv": dict(epochs=2, size="60k"),
    "nerv": dict(epochs=2, size="30k"),
    "nervpp": dict(epochs=1, size="60k"),
    "nirvana": dict(steps_per_group=2, size="3k", group=3, patch=16),
    "pfnr": dict(epochs=2, size="20k", density=0.5),
}


def global_state() -> dict:
    """The process-wide torch settings a fit or a decode may touch."""
    return {"cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "num_threads": torch.get_num_threads(), "grad_enabled": torch.is_grad_enabled(),
            "inference_mode": torch.is_inference_mode_enabled(), "default_dtype": torch.get_default_dtype(),
            "autocast_cpu": torch.is_autocast_enabled("cpu"), "autocast_cuda": torch.is_autocast_enabled("cuda")}


@pytest.fixture(scope="module")
def clip():
    return moving_gradients(T, H, W)


@pytest.fixture(scope="module")
def hnerv_file(clip, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("enc") / "clip.ncb")
    codec = registry.get("hnerv")
    encode_file(codec, clip, path, codec.Options(device="cpu", **TINY["hnerv"]))
    return path


def open_file(path: str, codec_name: str = "hnerv"):
    codec = registry.get(codec_name)
    return codec, codec.open(Reader.from_path(path), codec.DecodeOptions(device="cpu"))


def decode(codec, decoded, *args) -> np.ndarray:
    return np.concatenate(list(codec.frames(decoded, *args)))


class Tiny(nn.Module):
    """An HNeRV-like net small enough to compile on a CPU in seconds: embedding, conv, PixelShuffle, sigmoid."""

    def __init__(self, frames: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(frames, 8, 4, 6, generator=g))
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, idx, frames=None):
        return torch.sigmoid(self.shuffle(self.conv(self.emb[idx])))


def tiny_fit(accel: Accel, **kw):
    torch.manual_seed(0)
    model = Tiny(4)
    frames = (np.random.RandomState(0).rand(4, 8, 12, 3) * 255).astype(np.uint8)
    result = fit(model, frames, FitConfig(**{"epochs": 3, "device": "cpu", "accel": accel, "show_bar": False, **kw}))
    return model, result


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------------------------------------
# the device's choices


def test_accel_for_each_device(monkeypatch):
    monkeypatch.delenv("NCODEC_COMPILE", raising=False)
    cuda = accel_for(torch.device("cuda"))
    assert cuda == Accel(compile=True, **CUDA_PROFILE)
    monkeypatch.setenv("NCODEC_COMPILE", "0")             # what conftest sets: no compiling in a GPU test run
    assert accel_for(torch.device("cuda")).compile is False
    assert accel_for(torch.device("cpu")) == Accel()     # float32, eager, no flags
    with forced_accel(decode_dtype=torch.float16):
        assert accel_for(torch.device("cpu")) == Accel(decode_dtype=torch.float16)
        with forced_accel(channels_last=True):
            assert accel_for(torch.device("cpu")) == Accel(channels_last=True, decode_dtype=torch.float16)
    assert accel_for(torch.device("cpu")) == Accel()
    with pytest.raises(TypeError):
        with forced_accel(fp8=True):
            pass
    assert precision_label(torch.device("cuda"), torch.float16) == "cuda (fp16 autocast)"
    assert precision_label(torch.device("cpu"), None) == "cpu (fp32)"


# ---------------------------------------------------------------------------------------------------------------
# the CUDA options on the CPU, end to end


def fused_adam_on_cpu() -> bool:
    try:
        p = nn.Parameter(torch.zeros(2))
        p.grad = torch.ones(2)
        torch.optim.Adam([p], fused=True).step()
        return True
    except (RuntimeError, TypeError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_cuda_profile_encodes_and_decodes_on_the_cpu(name, clip, tmp_path, monkeypatch):
    """A CUDA run's fit and decode options, all at once, through encode_file and frames: bf16 autocast and
    channels_last in the fit, fused Adam, the TF32/cuDNN flags set and restored, fp16 decoding for the INR codecs."""
    if not fused_adam_on_cpu():
        pytest.skip("this torch has no fused Adam on the CPU")
    codec = registry.get(name)
    seen = {"dtypes": set(), "channels_last": [], "fused": [], "tf32_in_fit": []}
    adam, to_float = torch.optim.Adam, codec_fit.batch_to_float

    def spy_adam(*args, **kw):                  # built inside the fit, after it set its flags
        seen["fused"].append(kw.get("fused", False))
        seen["tf32_in_fit"].append(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark)
        return adam(*args, **kw)

    def spy_to_float(*args):
        x = to_float(*args)
        seen["channels_last"].append(x.is_contiguous(memory_format=torch.channels_last))
        return x

    def hook(module, args, out):
        if torch.is_grad_enabled() and isinstance(out, torch.Tensor):   # fitting, not decoding
            seen["dtypes"].add(out.dtype)

    monkeypatch.setattr(torch.optim, "Adam", spy_adam)
    monkeypatch.setattr(codec_fit, "batch_to_float", spy_to_float)
    handle = nn.modules.module.register_module_forward_hook(hook)
    before = global_state()
    try:
        with forced_accel(**CUDA_PROFILE):
            summary = encode_file(codec, clip, tmp_path / "out.ncb", codec.Options(device="cpu", **TINY[name]))
            c, decoded = open_file(str(tmp_path / "out.ncb"), name)
            fp16_frames = decode(c, decoded)
    finally:
        handle.remove()
    assert global_state() == before
    assert torch.bfloat16 in seen["dtypes"], seen["dtypes"]
    assert seen["channels_last"] and all(seen["channels_last"])
    assert seen["fused"] and all(seen["fused"]) and all(seen["tf32_in_fit"])
    reduced = codec.reduced_precision
    assert name == "pfnr" or summary["compile_seconds"] == 0.0      # reported apart (no compiling here)
    assert summary["psnr_holds_for"] == ("cpu (fp16 autocast)" if reduced else "cpu (fp32)")
    sha = summary["videos"][0]["sha256"] if name == "pfnr" else summary["sha256"]
    assert codec.decode_dtype(torch.device("cpu")) is None       # outside the forced profile: float32 again
    assert frames_digest(fp16_frames) == sha                       # the encoder's check is a real decode
    fp32_frames = decode(c, decoded)
    diff = np.abs(fp32_frames.astype(int) - fp16_frames)
    assert diff.max() <= (2 if reduced else 0)                     # fp16 against fp32: a step here and there


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/device_run.sh extra runs it)")
def test_cuda_encode_as_a_user_runs_it(clip, tmp_path):
    """On a GPU, the real thing: the device's own Accel with torch.compile, a fresh decode equal to the encoder's
    check, and the process-wide settings as they were."""
    codec = registry.get("hnerv")
    before = global_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with forced_accel(compile=True):
            summary = encode_file(codec, clip, tmp_path / "c.ncb", codec.Options(device="cuda", **TINY["hnerv"]))
    assert global_state() == before
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    assert summary["compile_seconds"] > 0 and summary["psnr_holds_for"] == "cuda (fp16 autocast)"
    decoded = codec.open(Reader.from_path(str(tmp_path / "c.ncb")), codec.DecodeOptions(device="cuda"))
    assert frames_digest(decode(codec, decoded)) == summary["sha256"]


# ---------------------------------------------------------------------------------------------------------------
# compiling: the fallback, the budget, the warm-up


def failing_backend(gm, example_inputs):
    raise RuntimeError("this backend cannot compile aten.pixel_shuffle")


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """Fault 1: torch.compile is lazy, so a backend failure surfaced at the fit's first step and crashed it."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=failing_backend))
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed .*fitting in eager mode"):
        compiled_model, result = tiny_fit(Accel(compile=True))
    eager_model, eager = tiny_fit(Accel())
    assert result.steps == eager.steps == 6
    assert same_weights(compiled_model, eager_model)          # the failed warm-up left nothing behind


class SlowFirstCall(nn.Module):
    """Stands in for torch.compile's result: the first call costs `delay` seconds, as compiling does."""

    def __init__(self, module, delay):
        super().__init__()
        self.module, self.delay, self.calls = module, delay, 0

    def forward(self, *args):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return self.module(*args)


def test_compile_time_is_outside_the_budget(monkeypatch):
    """Fault 2: the first (compiling) step ran on the --max-time clock; now the warm-up runs before it starts and
    its time is reported apart."""
    monkeypatch.setattr(torch, "compile", lambda m, **kw: SlowFirstCall(m, 1.5))
    _, result = tiny_fit(Accel(compile=True), epochs=None, max_time=1.0)
    assert result.compile_seconds >= 1.5
    assert result.seconds < 1.5 and result.steps > 1 and result.stopped_by == "max_time"


def test_warmup_step_leaves_the_fit_unchanged(monkeypatch):
    """The warm-up runs forward and backward on one batch; gradients, buffers and the RNG are put back, so the
    fit's weights are bit for bit those of a fit without it."""
    wrappers = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: wrappers.append(SlowFirstCall(m, 0.0)) or wrappers[-1])
    warm_model, warm = tiny_fit(Accel(compile=True))
    assert wrappers and wrappers[0].calls == warm.steps + 1           # the warm-up and every step
    plain_model, plain = tiny_fit(Accel())
    assert same_weights(warm_model, plain_model) and warm.psnr == plain.psnr
    # and what a warm-up could change besides: buffers, gradients, the RNG
    buf = nn.Module()
    buf.register_buffer("count", torch.zeros(()))
    buf.weight = nn.Parameter(torch.ones(()))

    def step(net):
        buf.count += 1
        (buf.weight * torch.rand(())).backward()
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(buf, step)
    assert buf.count == 0 and buf.weight.grad is None and torch.equal(torch.get_rng_state(), rng)


@pytest.mark.slow
def test_torch_compile_on_the_cpu():
    """The one real compile (inductor, C++ on the CPU; tens of seconds): it compiles, nothing falls back, and the
    compiled fit lands where the eager one does."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled_model, result = tiny_fit(Accel(compile=True))
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    assert result.compile_seconds > 0 and result.steps == 6
    eager_model, eager = tiny_fit(Accel())
    for a, b in zip(compiled_model.state_dict().values(), eager_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# decode settings, fp16 overflow, leaks


def test_nirvana_check_runs_without_tf32(clip, tmp_path, monkeypatch):
    """Fault 3: the fit leaves TF32 on (here: a caller turned it on, and the fit turns it on again), and NIRVANA's
    render set only cuDNN flags, so encode's check ran its SIREN matmuls in TF32 where a fresh decode runs float32.
    Every render now runs inside decode_settings: no TF32, deterministic cuDNN, no autocast (NIRVANA decodes in
    float32 even where fp16 is the device's decode dtype)."""
    seen = []
    render = nirvana.NirvanaCodec.render

    def spy(self, *args):
        for out in render(self, *args):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                         torch.is_autocast_enabled("cpu")))
            yield out

    monkeypatch.setattr(nirvana.NirvanaCodec, "render", spy)
    before = global_state()
    codec = nirvana.NirvanaCodec()
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.benchmark = True
        with forced_accel(**CUDA_PROFILE):
            summary = encode_file(codec, clip, tmp_path / "n.ncb", codec.Options(device="cpu", **TINY["nirvana"]))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark    # the caller's, restored
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before["matmul.allow_tf32"]
        torch.backends.cudnn.benchmark = before["cudnn.benchmark"]
    assert seen and set(seen) == {(False, False, True, False, False)}
    assert summary["psnr_holds_for"] == "cpu (fp32)"


def test_no_global_state_leaks(clip, tmp_path):
    """Fault 4: decoding set cudnn.deterministic and turned autotuning off for good, and fitting left TF32 and
    autotuning on. Two fits (HNeRV's and its QAT pass), NIRVANA's fits and both encode checks, and a decode dropped
    half-way, with the CUDA profile: the process-wide settings are the same afterwards, and between batches."""
    torch.backends.cudnn.benchmark = False                       # torch's defaults: anything a fit sets shows
    torch.backends.cudnn.deterministic = False
    before = global_state()
    with forced_accel(**CUDA_PROFILE):
        hnerv = registry.get("hnerv")
        encode_file(hnerv, clip, tmp_path / "h.ncb", hnerv.Options(device="cpu", qat_epochs=1, **TINY["hnerv"]))
        assert global_state() == before
        nirv = registry.get("nirvana")
        encode_file(nirv, clip, tmp_path / "n.ncb", nirv.Options(device="cpu", **TINY["nirvana"]))
        assert global_state() == before
        codec, decoded = open_file(str(tmp_path / "h.ncb"))
        batches = codec.frames(decoded, 0, T, 2)
        next(batches)
        assert global_state() == before                          # between batches: the caller's settings
        del batches                                              # dropped half-way: nothing left set
    assert global_state() == before


def test_fp16_overflow_is_decoded_again_in_float32(hnerv_file):
    """Fault 5: a network whose activations pass fp16's 65504 decodes to inf/NaN, and clamp_ kept NaN. Frames 0-3
    (one batch of 4) are pushed past it: that batch comes out as float32 decodes it, the other batch stays fp16."""
    codec, decoded = open_file(hnerv_file)
    with torch.no_grad():
        decoded.model.embeddings[:4] *= 1e5
    fp32 = decode(codec, decoded)
    with forced_accel(decode_dtype=torch.float16):
        with torch.inference_mode(), decode_settings(decoded.device, torch.float16):
            raw = decoded.model(torch.arange(0, 4))
        assert not torch.isfinite(raw).all()                     # the overflow is real
        with pytest.warns(RuntimeWarning, match="overflowed at frames 0:4"):
            fp16 = decode(codec, decoded)
        _, clean = open_file(hnerv_file)
        clean_fp16 = decode(codec, clean)
    assert np.array_equal(fp16[:4], fp32[:4])
    assert np.array_equal(fp16[4:], clean_fp16[4:])


def test_uint8_conversion_rounds_and_maps_nan_to_zero():
    out = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.51 / 255, 1.0, 2.0, -1.0, float("nan"), float("inf"),
                        -float("inf")]).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    assert to_uint8_frames(out)[0, 0, :, 0].tolist() == [0, 0, 0, 2, 255, 255, 0, 0, 255, 0]


def test_decode_settings_restore_what_they_change():
    before = global_state()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with decode_settings(torch.device("cpu"), torch.float16, threads=1):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
            assert torch.get_num_threads() == 1
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.benchmark = before["cudnn.benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = before["matmul.allow_tf32"]
    assert global_state() == before


# ---------------------------------------------------------------------------------------------------------------
# the two blind spots


@pytest.mark.parametrize("name, model", [("pc", "pc_model.pcm"), ("student", "student_model.safetensors")])
def test_damaged_optional_section_is_refused(name, model, tmp_path, capsys):
    """Fault 6a: the fixtures' only optional section was empty; pc and student write a real one ('names')."""
    data = bytearray((FIXTURES / f"{name}.ncb").read_bytes())
    sec = Reader.from_bytes(bytes(data)).section("names")
    assert not sec.required and sec.length > 10
    data[sec.offset + sec.length // 2] ^= 0x01
    bad = tmp_path / "bad.ncb"
    bad.write_bytes(bytes(data))
    out = tmp_path / ("out.npy" if name == "pc" else "out.json")
    code = main(["decode", str(bad), "-o", str(out), "--model", str(FIXTURES / model), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "section 'names': checksum mismatch" in err and not out.exists()


def test_frames_are_the_network_output_rounded(hnerv_file):
    """Fault 6b: the PSNR check compared encode's numbers with a decode through the same code, so truncating
    instead of rounding would pass. Here the frames are checked against the network's float32 output, rounded to
    nearest independently (numpy), for a tiny model."""
    codec, decoded = open_file(hnerv_file)
    frames = decode(codec, decoded)
    with torch.inference_mode():
        out = torch.cat([decoded.model(torch.arange(s, min(s + 4, T))) for s in range(0, T, 4)]).numpy()
    scaled = np.clip(out.astype(np.float32), 0, 1) * np.float32(255)
    expected = np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(frames, expected)
    assert (scaled - np.floor(scaled) >= 0.5).mean() > 0.2       # truncation would differ on these values

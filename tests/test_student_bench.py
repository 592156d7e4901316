"""benchmarks/split.py's arithmetic: the baselines' lossless settings, their cache, and issue #7's target check."""
import numpy as np
import pytest
import torch

from benchmarks import split as B
from codec.features.context_prior import ContextPrior


def _curve(method, points):
    return [{"method": method, "quality": q, "bytes_per_image": b, "top1": a} for q, (b, a) in enumerate(points)]


BASE = (_curve("jpeg", [(700, 0.40), (900, 0.78), (1100, 0.80), (1500, 0.82)])
        + _curve("webp", [(150, 0.60), (500, 0.79), (700, 0.81), (900, 0.80), (1600, 0.83)]))


def test_bytes_needed_interpolates_and_takes_the_cheapest_crossing():
    webp = [r for r in BASE if r["method"] == "webp"]
    assert B.bytes_needed(webp, 0.80) == pytest.approx(600)          # halfway 500 -> 700, before the dip at 900
    assert B.bytes_needed(webp, 0.60) == 150
    assert B.bytes_needed(webp, 0.84) is None                        # the curve never gets there


def test_target_check_needs_both_accuracy_and_a_fifth_of_the_cheaper_codec():
    # teacher 0.82 -> goal 0.81: WebP needs 700 bytes, JPEG 1300; the cheaper one (WebP) sets the bar, 140 bytes
    ok = B.target_check(139.5, 0.812, 0.82, BASE)
    assert ok["target_top1"] == pytest.approx(0.81)
    assert ok["webp_bytes_at_target"] == pytest.approx(700) and ok["jpeg_bytes_at_target"] == pytest.approx(1300)
    assert ok["baseline_bytes_at_target"] == pytest.approx(700)
    assert ok["bytes_fraction_of_baseline"] == pytest.approx(0.2, abs=1e-3)
    assert ok["top1_ok"] and ok["bytes_ok"] and ok["target_met"]
    assert not B.target_check(141.0, 0.812, 0.82, BASE)["target_met"]     # one byte too many
    low = B.target_check(100.0, 0.805, 0.82, BASE)                         # 1.5 points below the teacher
    assert low["bytes_ok"] and not low["top1_ok"] and not low["target_met"]
    never = B.target_check(10.0, 0.9, 0.95, BASE)                          # no codec reaches 0.94
    assert never["baseline_bytes_at_target"] is None and never["bytes_ok"] is None and not never["target_met"]


class MeanColour(torch.nn.Module):
    """A stand-in classifier: class = brightest channel (enough to see that decoded pixels reach it)."""
    def forward(self, x):
        return x.mean((2, 3))


def test_baselines_reach_lossless_and_reuse_cached_rows():
    g = np.random.default_rng(0)
    images = torch.from_numpy(g.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    labels = MeanColour()(images.float()).argmax(1)
    rows = B.baselines(MeanColour(), images, labels, torch.device("cpu"))
    assert [(r["method"], r["quality"]) for r in rows] == [
        (f.lower(), "lossless" if q is None else q) for f, q in B.BASELINE_SETTINGS]
    lossless = [r for r in rows if r["quality"] == "lossless"]
    assert {r["method"] for r in lossless} == {"webp", "png"}
    assert all(r["pixels_exact"] and r["top1"] == 1.0 for r in lossless)
    qualities = [r["quality"] for r in rows if r["method"] == "webp"]
    assert 95 in qualities and 100 in qualities
    # a cached row is taken as it is; only the missing settings are computed
    cached = [dict(r, top1=0.5) if r["method"] == "jpeg" else r for r in rows if r["quality"] != 100]
    again = B.baselines(MeanColour(), images, labels, torch.device("cpu"), cached)
    assert all(r["top1"] == 0.5 for r in again if r["method"] == "jpeg" and r["quality"] != 100)
    assert [r for r in again if r["quality"] == 100] == [r for r in rows if r["quality"] == 100]


def test_stage1_cache_names_differ_by_everything_that_changes_stage1():
    base = ("layer1", 16, "all", 4.0, 12, None)
    assert B.stage1_tag(*base) == "stage1_layer1_c16_all_b4_e12_n10000"      # the names cached so far stay valid
    variants = [dict(kd=1e4), dict(hard=True), dict(tail=True), dict(stride=8), dict(lr=5e-4),
                dict(init=B.Path("out/s.safetensors")), dict(width=48), dict(blocks=2), dict(decoder=64),
                dict(kernel=3), dict(decoder_blocks=2)]
    names = {B.stage1_tag(*base, **v) for v in variants} | {B.stage1_tag(*base)}
    assert len(names) == len(variants) + 1


def test_stage1_names_from_chained_inits_stay_within_the_filesystem_limit():
    """A stage-1 file trained from a stage-1 file trained from another repeats the chain in its name; the name
    stays short enough for the student file built on it, and distinct per init file."""
    base = ("layer1", 16, "all", 17.0, 6, None)
    init = B.Path("out/stage1_layer1_c16_all_b4_e12_n10000.safetensors")
    names = []
    for _ in range(4):
        tag = B.stage1_tag(*base, init=init, kd=1e4, hard=True, tail=True, lr=2.5e-4, decoder=128)
        names.append(tag)
        init = B.Path(f"out/{tag}.safetensors")
    assert names[0].endswith("_init-stage1_layer1_c16_all_b4_e12_n10000")     # short chains keep readable names
    assert all(len(n) <= B.MAX_STAGE1_TAG for n in names)
    assert len(set(names)) == len(names)
    student = f"student_{names[-1][len('stage1_'):]}_s2e24_lr0.0002_seed1.safetensors"
    assert len(student.encode()) < 255
    # --stage1-from a student file: its stem is kept up to the same limit, past it digested
    kept = B.Path(f"out/{'s' * B.MAX_STAGE1_TAG}.safetensors")
    assert B.short_stem(kept, B.MAX_STAGE1_TAG) == kept.stem
    long = B.Path(f"out/{'s' * (B.MAX_STAGE1_TAG + 1)}.safetensors")
    assert len(B.short_stem(long, B.MAX_STAGE1_TAG)) == 12
    assert B.short_stem(long, B.MAX_STAGE1_TAG) != B.short_stem(B.Path(f"out/t{long.name}"), B.MAX_STAGE1_TAG)


def test_device_cost_is_the_students_own_encoder_also_from_a_file(tmp_path):
    """The cost table follows each student's architecture, e.g. a --stage1-from file with a deeper encoder (the
    table used to show the default encoder's cost for every student)."""
    from codec.features import model_file
    from codec.features import train as T
    from codec.features.student import Student, make_config as student_config
    from codec.features.teacher import CifarResNet, make_config

    teacher = CifarResNet(make_config("resnet56", 10))
    default = student_config(teacher.config, **T.default_student_options(32))
    deeper = student_config(teacher.config, **{**T.default_student_options(32), "encoder_blocks": 2})
    path = tmp_path / "deeper.safetensors"
    student = Student(deeper)
    student.update_tables()
    model_file.save_student(str(path), student, {})
    costs = [B.device_cost(teacher, cfg) for cfg in (default, deeper, model_file.load(str(path)).config)]
    assert [round(c["encoder_macs_fraction_of_teacher"], 4) for c in costs] == [0.0229, 0.0417, 0.0417]
    assert costs[1] == costs[2] and costs[0]["teacher_macs"] == costs[1]["teacher_macs"]
    assert costs[0]["encoder_params"] < costs[1]["encoder_params"]


def test_stage2_loss_names_keep_the_default_cache_names():
    from codec.features.train import Stage2Loss
    assert Stage2Loss().tag() == ""
    tags = {Stage2Loss(1.0, "mixup").tag(), Stage2Loss(1.0, "cutmix").tag(), Stage2Loss(0.5, "mixup").tag(),
            Stage2Loss(1.0, "none").tag(), Stage2Loss(0.5, "none", 4.0).tag(), Stage2Loss(1.0, "none", 4.0).tag()}
    assert len(tags) == 6 and all(t.startswith("_") for t in tags)


def test_stage2_names_differ_by_seed_and_keep_the_default():
    from benchmarks.split import stage2_tag
    from codec.features.train import Stage2Loss
    assert stage2_tag(16, 0.01, Stage2Loss(), 0) == "s2e16_lr0.01"
    assert len({stage2_tag(16, 0.01, Stage2Loss(), s) for s in (0, 1, 2)}) == 3


@pytest.mark.parametrize("flags, message", [(["--encoder-kernel", "4"], "encoder_kernel = 4"),
                                            (["--encoder-blocks", "9"], "encoder_blocks = 9"),
                                            (["--decoder-blocks", "9"], "decoder_blocks = 9"),
                                            (["--distill", "none"], "--kd"),
                                            (["--kd-temperature2", "0"], "--kd-temperature2")])
def test_impossible_options_fail_in_one_line_before_any_work(tmp_path, monkeypatch, capsys, flags, message):
    """Checked before the teacher loads and the baselines run (they take minutes on CIFAR-10)."""
    for name in ("TRAIN", "TEST", "TEACHER"):           # present but unreadable: reading any of them would fail
        (tmp_path / name).write_text("not data")
        monkeypatch.setattr(B, name, tmp_path / name)
    assert B.main([*flags, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("benchmarks.split: ") and message in err
    assert not (tmp_path / "out").exists()


def test_the_held_back_rest_is_the_complement_of_the_benchmarks_subset():
    from codec.features.data import balanced_prefix
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 1, 0, 2, 2])
    chosen, rest = B.split_test(labels, 4)
    assert torch.equal(chosen, balanced_prefix(labels, 4))
    assert sorted(chosen.tolist() + rest.tolist()) == list(range(10)) and not set(chosen.tolist()) & set(rest.tolist())
    everything, nothing = B.split_test(labels, None)
    assert torch.equal(everything, torch.arange(10)) and len(nothing) == 0
    assert len(B.split_test(labels, 10)[1]) == 0


def test_holdout_check_weighs_the_two_parts_and_judges_accuracy_on_all():
    # 81.90% on the first 4,000 and 81.15% on the other 4,000 is 81.525% on all 8,000: short of 83.13% - 1 point
    check = B.holdout_check(0.8190, 0.8115, 0.8330, 4000, 4000, 0.83125)
    assert check["top1_all"] == pytest.approx(0.81525) and check["target_top1_all"] == pytest.approx(0.82125)
    assert check["top1_rest"] == 0.8115 and check["teacher_top1_rest"] == 0.8330 and not check["top1_ok_all"]
    assert B.on_all(1.0, 1, 0.0, 3) == 0.25
    assert B.holdout_check(0.83, 0.83, 0.83, 100, 300, 0.835)["top1_ok_all"]


def test_with_context_prior_fits_a_copy_once_and_evaluation_reports_both_codings(tmp_path):
    from codec.features import model_file
    from codec.features.data import load_dataset
    from tests.students import train_tiny_models

    folder = train_tiny_models(tmp_path, {"student": 0.3})
    plain = folder / "student.safetensors"
    student, _ = model_file.load_student(str(plain))
    student.context_prior = None                      # a file written before the prior existed
    model_file.save_student(plain, student, model_file.load(plain).meta)
    ds = load_dataset("digits", limit=500)
    copy = B.with_context_prior(plain, ds, torch.device("cpu"))
    assert copy.name == "student+ctx.safetensors" and copy.exists()
    record = model_file.load(copy).meta["training"]
    assert {"heldout_bytes_factorised", "heldout_bytes_in_context", "context_prior"} <= set(record)
    stamp = copy.stat().st_mtime_ns
    assert B.with_context_prior(plain, ds, torch.device("cpu")) == copy and copy.stat().st_mtime_ns == stamp
    # a cached copy whose prior has the first prior's fixed parents (no parents tensor) is fitted again
    old, _ = model_file.load_student(str(copy))
    c = old.latent_shape[0]
    old.context_prior = ContextPrior.from_tensors({
        "context_prior.order": torch.arange(c, dtype=torch.int32),
        "context_prior.min_symbol": torch.tensor([-1], dtype=torch.int32),
        "context_prior.counts": torch.ones(c, 8 ** 3, 4, dtype=torch.int32)}, c)
    assert old.context_prior.legacy and B.needs_context_prior(old)
    model_file.save_student(copy, old, model_file.load(copy).meta)
    stamp = copy.stat().st_mtime_ns
    assert B.with_context_prior(plain, ds, torch.device("cpu")) == copy and copy.stat().st_mtime_ns != stamp
    refit = model_file.load_student(str(copy))[0].context_prior
    assert refit is None or not refit.legacy
    fitted, _ = model_file.load_student(str(copy))
    fitted.context_prior = ContextPrior.fit(np.random.default_rng(0).integers(-1, 2, (200, 4, 4, 4)))
    row = B.evaluate_student(fitted, ds.images[:40], ds.labels[:40], torch.device("cpu"))
    assert row["context_prior"] and row["factorised_bytes_per_image"] > 0 and row["bytes_per_image"] > 0
    assert fitted.context_prior is not None           # evaluation restores the prior it set aside


def test_holdout_check_counts_a_student_exactly_one_point_below_the_teacher_as_within():
    # 3,271 + 3,299 of 8,000 right = 82.125%; teacher 6,650 of 8,000 = 83.125%: exactly one point, which is within
    teacher_all = 6650 / 8000
    check = B.holdout_check(3271 / 4000, 3299 / 4000, 3340 / 4000, 4000, 4000, teacher_all)
    assert check["top1_ok_all"]
    assert not B.holdout_check(3270 / 4000, 3299 / 4000, 3340 / 4000, 4000, 4000, teacher_all)["top1_ok_all"]


def test_baseline_cache_reads_the_rows_with_meta_and_the_bare_list_earlier_runs_wrote(tmp_path):
    import json

    rows = _curve("jpeg", [(700, 0.40)])
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(rows))
    new.write_text(json.dumps({"rows": rows, "meta": {"commit": "unknown"}}))
    assert B.read_cache(old) == rows and B.read_cache(new) == rows and B.read_cache(tmp_path / "none.json") is None

"""Entropic Student training on the bundled 8x8 digits: the two stages, model files, the teacher loaders."""
import math

import pytest
import torch

from codec.device import cpu_thread_limit
from codec.errors import UserError
from codec.features import model_file
from codec.features import train as T
from codec.features.data import load_dataset
from codec.features.student import Student, make_config as student_config
from codec.features.teacher import CifarResNet, count_macs, load_pretrained_resnet, make_config

from tests.students import TINY


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with cpu_thread_limit(torch.device("cpu"), limit=1):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=600)


@pytest.fixture(scope="module")
def teacher(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    summary = T.train_teacher(digits, str(path), schedule=T.Schedule(epochs=4, batch_size=64, lr=0.1),
                              device="cpu")
    assert summary["heldout_top1"] > 0.5          # far above chance (0.1): it did learn
    return model_file.load_teacher(str(path))


def _student(digits, teacher, path, epochs2, seed=0):
    return T.train_student(digits, teacher, str(path), beta=0.5, stage1=T.Schedule(4, 32, 3e-3),
                           stage2=T.Schedule(epochs2, 32, 1e-2), student_options=TINY, device="cpu", seed=seed)


def test_stage2_leaves_encoder_and_prior_bit_identical(digits, teacher, tmp_path):
    first = _student(digits, teacher, tmp_path / "a.safetensors", epochs2=0)
    _student(digits, teacher, tmp_path / "b.safetensors", epochs2=2)
    # stage 2 continued from the stage-1 file, twice in a row: stage 1 is not redone
    T.finetune_student(digits, teacher, str(tmp_path / "a.safetensors"), str(tmp_path / "c.safetensors"),
                       stage2=T.Schedule(1, 32, 1e-2), device="cpu")
    summary = T.finetune_student(digits, teacher, str(tmp_path / "c.safetensors"), str(tmp_path / "d.safetensors"),
                                 stage2=T.Schedule(1, 32, 1e-3), device="cpu")
    assert summary["stage2_from"] == "c.safetensors" and summary["beta"] == 0.5
    assert summary["stage1_epochs"] == 4 and summary["stage1_head_error"] == first["stage1_head_error"]
    a = model_file.load(tmp_path / "a.safetensors").tensors
    frozen = [k for k in a if k.startswith(("encoder.", "entropy_bottleneck."))]
    assert any(k.endswith("_quantized_cdf") for k in frozen) and any(k.startswith("encoder.") for k in frozen)
    for name in ("b", "c", "d"):
        b = model_file.load(tmp_path / f"{name}.safetensors").tensors
        for k in frozen:
            assert torch.equal(a[k], b[k]), (name, k)
        # ... while stage 2 did train the decoder and the tail
        assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith(("decoder.", "tail.", "linear."))), name


def test_finetune_refuses_a_student_of_another_teacher(digits, teacher, tmp_path):
    _student(digits, teacher, tmp_path / "a.safetensors", epochs2=0)
    other = CifarResNet(make_config("digits", num_classes=10, classes=digits.classes, in_channels=1, image_size=8,
                                    mean=[0.3], std=[0.3]))
    with pytest.raises(UserError, match="another teacher"):
        T.finetune_student(digits, other, str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                           stage2=T.Schedule(1, 32, 1e-2), device="cpu")


def test_init_from_data_spreads_the_latent_and_starts_the_decoder_at_the_mean_feature(digits, teacher):
    student = Student(student_config(teacher.config, **TINY))
    x = digits.images[:128].float() / 255
    with torch.no_grad():
        target = teacher.features(x, upto="layer1")["layer1"]
        before = student.encode(x).std()
    T.init_from_data(student, x, target)
    with torch.no_grad():
        after = student.encode(x).std()
    assert before < 1 and after == pytest.approx(T.LATENT_INIT_STD, rel=1e-3)
    assert torch.allclose(student.decoder[-1].bias, target.mean((0, 2, 3)))


def test_stage1_learns_the_split_feature_instead_of_its_mean(digits, teacher, tmp_path):
    # the collapsed CIFAR students never got below the error of always predicting the mean feature map
    summary = T.train_student(digits, teacher, str(tmp_path / "h.safetensors"), beta=0.0,
                              stage1=T.Schedule(6, 32, 3e-3), stage2=T.Schedule(0, 32, 1e-2),
                              student_options=TINY, device="cpu", distill="head")
    assert summary["stage1_head_error"] < 0.6 * summary["stage1_head_error_if_mean"]


def test_hard_latent_decodes_what_the_bitstream_carries_and_passes_gradients(teacher):
    student = Student(student_config(teacher.config, **TINY)).train()
    x = torch.rand(8, 1, 8, 8)
    out, likelihoods = student.forward_train(x, with_tail=False, hard=True)
    with torch.no_grad():
        exact = student.decode(student.from_symbols(student.to_symbols(student.encode(x))))
    assert torch.equal(out["layer1"], exact) and likelihoods.shape[0] == 8
    out["layer1"].square().sum().backward()          # straight-through: the encoder still gets a gradient
    assert student.encoder[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("distill", ["all", "head"])
def test_stage1_kd_weight_trains_through_the_logits(digits, teacher, tmp_path, distill):
    run = lambda name, kd: T.train_student(  # noqa: E731
        digits, teacher, str(tmp_path / name), beta=0.5, stage1=T.Schedule(1, 64, 3e-3),
        stage2=T.Schedule(0, 64, 1e-2), student_options=TINY, device="cpu", distill=distill, kd_weight=kd,
        hard_latent=True)
    run("plain.safetensors", 0.0)
    kd = run("kd.safetensors", 50.0)
    assert (kd["kd_weight"], kd["hard_latent"], kd["distill"]) == (50.0, True, distill) and "stage1_init" not in kd
    a, b = (model_file.load(tmp_path / n).tensors for n in ("plain.safetensors", "kd.safetensors"))
    # same seed, same data order: only the KD term differs, and it reached the encoder
    assert not torch.equal(a["encoder.0.weight"], b["encoder.0.weight"])
    with pytest.raises(UserError, match="kd-weight"):
        run("bad.safetensors", -1.0)


def test_stage1_without_feature_targets_trains_on_kd_alone(digits, teacher, tmp_path):
    run = lambda name, distill, kd: T.train_student(  # noqa: E731
        digits, teacher, str(tmp_path / name), beta=0.5, stage1=T.Schedule(1, 64, 3e-3),
        stage2=T.Schedule(0, 64, 1e-2), student_options=TINY, device="cpu", distill=distill, kd_weight=kd,
        hard_latent=True)
    none = run("none.safetensors", "none", 50.0)
    run("all.safetensors", "all", 50.0)
    assert none["distill"] == "none" and none["stage1_head_error"] > 0       # the split feature is still reported
    a, b = (model_file.load(tmp_path / n).tensors for n in ("none.safetensors", "all.safetensors"))
    # same seed and data order: dropping the feature targets changed what the encoder learned
    assert not torch.equal(a["encoder.0.weight"], b["encoder.0.weight"])
    with pytest.raises(UserError, match="kd-weight"):
        run("bad.safetensors", "none", 0.0)
    with pytest.raises(UserError, match="all, head, none"):
        run("bad.safetensors", "logits", 50.0)


def test_stage1_trains_the_tail_only_with_tune_tail(digits, teacher, tmp_path):
    tail = {k: v for k, v in model_file.state_tensors(teacher).items() if k.startswith(("layer2.", "linear."))}
    for tune in (False, True):
        T.train_student(digits, teacher, str(tmp_path / f"{tune}.safetensors"), beta=0.5,
                        stage1=T.Schedule(1, 64, 3e-3), stage2=T.Schedule(0, 64, 1e-2), student_options=TINY,
                        device="cpu", kd_weight=10.0, tune_tail=tune)
        b = model_file.load(tmp_path / f"{tune}.safetensors").tensors
        same = [torch.equal(b[k if k.startswith("linear.") else f"tail.{k}"], v) for k, v in tail.items()]
        # BatchNorm statistics stay the teacher's either way; weights move only with tune_tail
        assert all(same) != tune and all(torch.equal(b[f"tail.{k}"], v) for k, v in tail.items()
                                         if k.endswith(("running_mean", "running_var")))


def test_init_starts_stage1_from_a_student_file(digits, teacher, tmp_path):
    first = _student(digits, teacher, tmp_path / "a.safetensors", epochs2=1)
    summary = T.train_student(digits, teacher, str(tmp_path / "b.safetensors"), beta=0.5,
                              stage1=T.Schedule(0, 32, 1e-3), stage2=T.Schedule(0, 32, 1e-2), device="cpu",
                              init=str(tmp_path / "a.safetensors"))
    assert summary["stage1_init"] == "a.safetensors" and summary["latent_shape"] == first["latent_shape"]
    a = model_file.load(tmp_path / "a.safetensors").tensors
    b = model_file.load(tmp_path / "b.safetensors").tensors
    # zero stage-1 epochs: encoder, prior and decoder are the init file's; the tail is the teacher's again
    for k in a:
        if k.startswith(("encoder.", "entropy_bottleneck.", "decoder.")):
            assert torch.equal(a[k], b[k]), k
    tail = {k: v for k, v in model_file.state_tensors(teacher).items() if k.startswith("layer2.")}
    assert all(torch.equal(b[f"tail.{k}"], v) for k, v in tail.items()) and tail
    with pytest.raises(UserError, match="architecture"):
        T.train_student(digits, teacher, str(tmp_path / "c.safetensors"), beta=0.5, stage1=T.Schedule(1, 32, 1e-3),
                        stage2=T.Schedule(0, 32, 1e-2), student_options=TINY, device="cpu",
                        init=str(tmp_path / "a.safetensors"))


def test_student_file_carries_its_tables_and_classifies_like_before(digits, teacher, tmp_path):
    summary = _student(digits, teacher, tmp_path / "s.safetensors", epochs2=1)
    student, model_id = model_file.load_student(str(tmp_path / "s.safetensors"))
    assert model_id == summary["model_id"]
    cdf, length, offset = student.tables()
    assert cdf.shape[0] == 4 and length.min() >= 3 and (cdf[:, 0] == 0).all()
    assert 0 < summary["heldout_bits_per_image"] < 4 * 4 * 4 * 24    # bounded by 24 bits per latent symbol
    x = digits.images[:32].float() / 255
    with torch.no_grad():
        assert torch.equal(student(x).argmax(1), student(x).argmax(1))
    assert summary["heldout_top1_student"] > 0.3


def test_resume_continues_after_the_last_finished_epoch(digits, teacher, tmp_path, monkeypatch):
    out = tmp_path / "r.safetensors"
    saves = []
    real_save = T.Checkpoint.save

    def interrupted(self, model, optimizer, meta):
        real_save(self, model, optimizer, meta)
        stage, epoch = meta["stage"], meta["epoch"]
        saves.append((stage, epoch))
        if (stage, epoch) == (1, 0):
            raise KeyboardInterrupt            # the run dies right after its first checkpoint

    def run(resume):
        return T.train_student(digits, teacher, str(out), beta=0.5, stage1=T.Schedule(2, 64, 2e-3),
                               stage2=T.Schedule(1, 64, 1e-2), student_options=TINY, device="cpu", resume=resume)

    monkeypatch.setattr(T.Checkpoint, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(resume=False)
    ckpt = tmp_path / "r.safetensors.ckpt.safetensors"
    assert ckpt.exists() and not out.exists()
    saves.clear()
    run(resume=True)
    assert saves == [(1, 1), (2, 0)]              # stage 1 epoch 0 was not run again
    assert out.exists() and not ckpt.exists()
    model_file.load_student(str(out))


def test_resume_refuses_a_checkpoint_of_another_setup(digits, teacher, tmp_path):
    out = tmp_path / "x.safetensors"
    cfg = student_config(teacher.config, **TINY)
    T.run_checkpoint(str(out), "student", cfg, every=0).save(Student(cfg), torch.optim.Adam(Student(cfg).parameters()),
                                                             {"stage": 1, "epoch": 0})
    with pytest.raises(UserError, match="another student setup"):
        T.train_student(digits, teacher, str(out), beta=0.01, stage1=T.Schedule(1, 64, 1e-3),
                        stage2=T.Schedule(1, 64, 1e-2), student_options={**TINY, "latent_channels": 5},
                        device="cpu", resume=True)
    # the same architecture and beta, another stage-1 loss: not the same setup either
    cfg["beta"] = 0.01
    setup = {**cfg, "stage1_loss": {"distill": "all", "kd_weight": 0.0, "hard_latent": False}, "init": None}
    T.run_checkpoint(str(out), "student", setup, every=0).save(
        Student(cfg), torch.optim.Adam(Student(cfg).parameters()), {"stage": 1, "epoch": 0})
    with pytest.raises(UserError, match="another student setup"):
        T.train_student(digits, teacher, str(out), beta=0.01, stage1=T.Schedule(1, 64, 1e-3),
                        stage2=T.Schedule(1, 64, 1e-2), student_options=TINY, device="cpu", resume=True,
                        kd_weight=1.0)


def test_pretrained_checkpoint_layout_loads_without_pickle_code(tmp_path):
    """The published CIFAR ResNet format: {'best_prec1', 'state_dict'} with 'module.' keys, no BN counters."""
    src = CifarResNet(make_config("resnet20", 10)).eval()
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet20-test.th"
    torch.save({"best_prec1": 91.0, "state_dict": state}, path)
    loaded = load_pretrained_resnet(str(path)).eval()
    assert loaded.config["blocks"] == 3 and loaded.config["widths"] == [16, 32, 64]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))
    assert isinstance(model_file.load_teacher(str(path)), CifarResNet)


def test_not_a_model_file_is_a_one_line_user_error(tmp_path):
    for content in (b"", b"hello world, not a model", b"\xff" * 64):
        p = tmp_path / "bad.safetensors"
        p.write_bytes(content)
        with pytest.raises(UserError) as e:
            model_file.load_student(str(p))
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        model_file.load_student(str(tmp_path / "missing.safetensors"))
    p = tmp_path / "bad.th"
    p.write_bytes(b"not a torch file")
    with pytest.raises(UserError):
        model_file.load_teacher(str(p))


def test_a_teacher_file_is_not_a_student(teacher, tmp_path):
    p = tmp_path / "t.safetensors"
    model_file.save_teacher(p, teacher)
    with pytest.raises(UserError, match="teacher model, not a student"):
        model_file.load_student(str(p))


def test_device_encoder_is_under_5_percent_of_resnet56_macs():
    """The issue's target for the CIFAR-10 configuration (default student options for 32x32 images)."""
    teacher = CifarResNet(make_config("resnet56", 10))
    student = Student(student_config(teacher.config, **T.default_student_options(32)))
    x = torch.zeros(1, 3, 32, 32)
    t_macs = count_macs(teacher, x)
    e_macs = count_macs(student.encoder, x)
    assert math.isclose(t_macs, 125.49e6, rel_tol=1e-3)      # the figure quoted for ResNet-56
    assert e_macs < 0.05 * t_macs


@pytest.mark.parametrize("options, fraction", [(dict(encoder_channels=48), 0.0461),
                                               (dict(encoder_blocks=2), 0.0417),
                                               (dict(encoder_blocks=3, encoder_kernel=3), 0.0396),
                                               (dict(encoder_blocks=4, encoder_kernel=3), 0.0490)])
def test_bigger_encoders_stay_under_5_percent_of_resnet56(options, fraction):
    """The bigger device encoders the benchmark tries: wider (48), or residual blocks at 8x8 (with 3x3 instead of
    5x5 down-sampling for three or four)."""
    teacher = CifarResNet(make_config("resnet56", 10))
    student = Student(student_config(teacher.config, **{**T.default_student_options(32), **options}))
    x = torch.zeros(1, 3, 32, 32)
    assert count_macs(student.encoder, x) / count_macs(teacher, x) == pytest.approx(fraction, abs=1e-4)
    blocks = [m for m in student.encoder if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) == options.get("encoder_blocks", 0)
    assert student.encode(torch.rand(2, 3, 32, 32)).shape == (2, 16, 8, 8)
    kernel = options.get("encoder_kernel", 5)
    assert [m.kernel_size for m in student.encoder if type(m).__name__ == "Conv2d"] == \
        [(kernel, kernel)] * 2 + [(3, 3)]


def test_a_config_without_encoder_blocks_builds_the_encoder_it_was_written_with():
    """Files written before the options existed carry no encoder_blocks or encoder_kernel: they load as the plain
    encoder with 5x5 down-sampling."""
    teacher = CifarResNet(make_config("resnet56", 10))
    cfg = student_config(teacher.config, **T.default_student_options(32))
    del cfg["encoder_blocks"], cfg["encoder_kernel"]
    encoder = Student(cfg).encoder
    assert [type(m).__name__ for m in encoder] == ["Conv2d", "GDN", "Conv2d", "GDN", "Conv2d"]
    assert encoder[0].kernel_size == (5, 5)
    with pytest.raises(UserError, match="encoder_blocks"):
        Student(student_config(teacher.config, encoder_blocks=-1))
    for kernel in (1, 4, 9):
        with pytest.raises(UserError, match="encoder_kernel"):
            Student(student_config(teacher.config, encoder_kernel=kernel))


def test_decoder_blocks_sit_at_the_latent_resolution_and_cost_the_device_nothing():
    """`decoder_blocks` residual blocks follow the decoder's first convolution, at 8x8 for CIFAR; the encoder and its
    MACs are untouched, and a config without the key (older files) builds the plain decoder."""
    teacher = CifarResNet(make_config("resnet56", 10))
    options = T.default_student_options(32)
    plain = Student(student_config(teacher.config, **options))
    deep = Student(student_config(teacher.config, **options, decoder_blocks=2))
    names = [type(m).__name__ for m in deep.decoder]
    assert names[:4] == ["Conv2d", "GDN", "ResidualBlock", "ResidualBlock"]
    assert names[4:] == [type(m).__name__ for m in plain.decoder][2:]
    x = torch.zeros(1, 3, 32, 32)
    assert count_macs(deep.encoder, x) == count_macs(plain.encoder, x)
    assert deep.decode(deep.encode(torch.rand(2, 3, 32, 32))).shape == (2, 16, 32, 32)
    cfg = dict(deep.config)
    del cfg["decoder_blocks"]
    assert [type(m).__name__ for m in Student(cfg).decoder] == [type(m).__name__ for m in plain.decoder]
    with pytest.raises(UserError, match="decoder_blocks"):
        Student(student_config(teacher.config, decoder_blocks=9))


def test_image_folder_and_tar_archive_load_alike(tmp_path):
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "set" / cls / f"{i}.png")
    with tarfile.open(tmp_path / "set.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "set", arcname="train")
    folder = load_dataset(str(tmp_path / "set"))
    archive = load_dataset(str(tmp_path / "set.tar.gz"))
    assert folder.classes == archive.classes == ["cat", "dog"]
    assert folder.images.shape == (6, 3, 6, 6) and torch.equal(folder.images, archive.images)
    assert folder.labels.tolist() == archive.labels.tolist() == [0, 0, 0, 1, 1, 1]
    Image.fromarray(np.zeros((7, 6, 3), np.uint8)).save(tmp_path / "set" / "dog" / "odd.png")
    with pytest.raises(UserError, match="differ in size"):
        load_dataset(str(tmp_path / "set"))
    with pytest.raises(UserError, match="not found"):
        load_dataset(str(tmp_path / "nothing"))


def test_a_diverging_run_stops_with_a_one_line_error(digits, teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "rate_bits", lambda likelihoods: torch.tensor(float("nan")))
    with pytest.raises(UserError, match="student stage 1 diverged in epoch 1.*lower learning rate"):
        T.train_student(digits, teacher, str(tmp_path / "n.safetensors"), beta=0.5, stage1=T.Schedule(1, 64, 1e-3),
                        stage2=T.Schedule(0, 64, 1e-2), student_options=TINY, device="cpu")
    assert not (tmp_path / "n.safetensors").exists()


def test_mixup_blends_pairs_and_cutmix_pastes_a_box_of_the_partner():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 32, 32)
    mixed, partner, lam = T.mix_images(x, "mixup", g)
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == list(range(6))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner])
    for _ in range(5):
        cut, partner, lam = T.mix_images(x, "cutmix", g)
        from_partner = (cut == x[partner]) & (cut != x)        # pixels that came from the partner
        kept = 1 - from_partner[partner != torch.arange(6)].float().mean().item()
        assert kept == pytest.approx(lam, abs=1e-6)             # lam is the area actually kept
        assert torch.equal(cut[partner == torch.arange(6)], x[partner == torch.arange(6)])


def test_kd_loss_mixes_the_labels_and_alpha_1_is_the_teacher_alone():
    torch.manual_seed(0)
    logits, t_logits = torch.randn(8, 10), torch.randn(8, 10)
    a, b = torch.randint(0, 10, (8,)), torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy
    kl = T.kd_loss(logits, t_logits, a, alpha=1.0)
    assert torch.isclose(kl, T.kd_loss(logits, t_logits, b, alpha=1.0))          # no labels in it
    hot = T.kd_loss(logits, t_logits, a, alpha=1.0, temperature=4.0)     # T^2 * KL of the softened outputs
    p_t = torch.softmax(t_logits / 4, 1)
    by_hand = 16 * (p_t * (p_t.log() - torch.log_softmax(logits / 4, 1))).sum(1).mean()
    assert torch.isclose(hot, by_hand, rtol=1e-5) and not torch.isclose(hot, kl)
    mixed = T.kd_loss(logits, t_logits, a, alpha=0.5, mixed=(b, 0.3))
    assert torch.isclose(mixed, 0.5 * (0.3 * ce(logits, a) + 0.7 * ce(logits, b)) + 0.5 * kl)


@pytest.mark.parametrize("loss2", [T.Stage2Loss(1.0, "cutmix"), T.Stage2Loss(0.5, "mixup", 4.0)])
def test_stage2_with_mixed_images_trains_the_tail_and_keeps_the_encoder(digits, teacher, tmp_path, loss2):
    _student(digits, teacher, tmp_path / "a.safetensors", epochs2=0)
    summary = T.finetune_student(digits, teacher, str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                                 stage2=T.Schedule(1, 32, 1e-2), device="cpu", loss2=loss2)
    assert summary["stage2_loss"] == {"kd_alpha": loss2.kd_alpha, "mix": loss2.mix,
                                      "kd_temperature": loss2.kd_temperature}
    a, b = (model_file.load(tmp_path / f"{n}.safetensors").tensors for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder.", "entropy_bottleneck.")))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith(("tail.", "linear.")))
    assert summary["heldout_top1_student"] > 0.3


@pytest.mark.parametrize("loss2, message", [(T.Stage2Loss(0.5, "blend"), "--mix 'blend'"),
                                            (T.Stage2Loss(1.5, "none"), "--kd-alpha must be between 0 and 1"),
                                            (T.Stage2Loss(0.5, "none", -1.0), "--kd-temperature")])
def test_impossible_stage2_losses_are_user_errors(digits, teacher, tmp_path, loss2, message):
    with pytest.raises(UserError, match=message):
        T.train_student(digits, teacher, str(tmp_path / "a.safetensors"), beta=0.5, stage1=T.Schedule(1, 32, 3e-3),
                        stage2=T.Schedule(1, 32, 1e-2), student_options=TINY, device="cpu", loss2=loss2)
    assert not (tmp_path / "a.safetensors").exists()

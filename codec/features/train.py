"""Training the teacher and the two stages of the Entropic Student.

Stage 1 (head distillation + rate): the encoder, prior and decoder learn to reproduce the teacher's features at the
split point and after every later stage (the tail is frozen but passes gradients), plus beta * bits of the latent;
the bottleneck's aux loss (its quantiles) is stepped by the same optimizer, as in the paper's code. Two options
depart from the paper for low rates (docs/STUDENT.md): kd_weight adds the KD loss on the logits, so the bits go to
what the classifier needs; hard_latent decodes the rounded latent (straight-through) instead of the noisy one;
tune_tail trains the tail in stage 1 too.
Stage 2 (fine-tuning): the CDF tables are frozen with update(); the encoder and prior are frozen; the decoder and the
tail learn from the hard-quantised latent with the KD loss (1 - alpha) * CE + alpha * T^2 * KL(teacher || student)
at temperature T, alpha 0.5 and T 1 by default; Stage2Loss can raise alpha to 1 (match the teacher alone) and mix
pairs of images (mixup or CutMix), so that the tail is taught the teacher's function between the few thousand
training images as well.

Checkpoints (codec.checkpoint) are written beside the output (`OUT.ckpt.safetensors`) at the end of an epoch, every
epoch by default (Schedule.checkpoint_every), and picked up by resume=True.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from codec.checkpoint import Checkpoint, Saved
from codec.device import cpu_thread_limit, pick_device, seed_everything
from codec.errors import UserError
from codec.features import model_file
from codec.features.codec import LatentCoder, encode_images
from codec.features.context_prior import ContextPrior
from codec.features.data import ImageSet, augment, split_holdout, to_float
from codec.features.student import Student, load_student_state, make_config as make_student_config
from codec.features.teacher import CifarResNet, make_config as make_teacher_config
from codec.progress import progress
from codec.schedule import set_lr, step_decay, warmup_cosine

PRIOR_LR_SCALE = 10.0
TAIL_LR_SCALE = 0.1    # stage 1 with tune_tail: the pretrained tail moves 10x slower than the new encoder/decoder
LATENT_INIT_STD = 2.0  # the latent's initial spread, in quantisation steps (the bottleneck's noise is U(-0.5, 0.5))
HOLDOUT = 0.1          # fraction of the data held out to report accuracy; the split is fixed (seed 0)


def thread_limit(device: torch.device, image_size: int):
    """codec.device's CPU-thread rule, capped at one thread for tiny images: their models train ~20x faster on one
    thread than on two that spin-wait for each other on a busy 2-core machine."""
    return cpu_thread_limit(device, limit=1 if image_size <= 16 else None)


@dataclass
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    max_time: float | None = None      # seconds for the whole stage; the stage ends after the epoch that passes it
    max_images: int | None = None      # images for the whole stage (a fraction of an epoch is allowed)
    checkpoint_every: float = 0.0      # seconds between checkpoints, written at the end of an epoch (0: every one)


MIXES = ("none", "mixup", "cutmix")
DISTILLS = ("all", "head", "none")     # stage-1 feature targets: every stage, the split feature, or none (KD only)


@dataclass(frozen=True)
class Stage2Loss:
    """Stage 2's objective: the KL weight alpha (the rest is CE on the labels), the KD temperature and how the
    images are mixed."""
    kd_alpha: float = 0.5
    mix: str = "none"          # "mixup" (a blend) or "cutmix" (a pasted box) of each image with another one
    kd_temperature: float = 1.0

    def check(self) -> None:
        if self.mix not in MIXES:
            raise UserError(f"--mix {self.mix!r}: expected one of {', '.join(MIXES)}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise UserError(f"--kd-alpha must be between 0 and 1, got {self.kd_alpha}")
        if not 0.0 < self.kd_temperature <= 100.0:
            raise UserError(f"--kd-temperature must be in (0, 100], got {self.kd_temperature}")

    def tag(self) -> str:
        """A short file-name part; empty for the default loss (so earlier cache names stay valid)."""
        if self == Stage2Loss():
            return ""
        return f"_{self.mix}_a{self.kd_alpha:g}" + (f"_t{self.kd_temperature:g}" if self.kd_temperature != 1 else "")


def check_stage1_loss(distill: str, kd_weight: float) -> None:
    """The stage-1 targets must be known, and a stage 1 without feature targets needs the KD term."""
    if distill not in DISTILLS:
        raise UserError(f"--distill {distill!r}: expected one of {', '.join(DISTILLS)}")
    if distill == "none" and kd_weight <= 0:
        raise UserError("--distill none trains on the KD loss alone: give --kd-weight > 0")


def run_checkpoint(output: str, what: str, setup: dict[str, Any], every: float) -> Checkpoint:
    """The checkpoint beside `output` of a `what` run ("teacher", "student", "student stage 2") with this setup."""
    return Checkpoint(output + ".ckpt", {"what": what, "setup": setup}, every=every, what=f"{what} setup")


def batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def augmentation(ds: ImageSet) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Crop-and-pad for every set; horizontal flips only for natural colour images (a flipped digit is not one)."""
    pad = max(1, ds.size[0] // 8)
    flip = ds.channels == 3
    return lambda x, g: augment(x, flip=flip, pad=pad, generator=g)


@torch.no_grad()
def accuracy(model: Callable[[torch.Tensor], torch.Tensor], ds: ImageSet, device: torch.device,
             batch_size: int = 500) -> float:
    if len(ds) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(ds), batch_size):
        x = to_float(ds.images[i:i + batch_size].to(device))
        correct += int((model(x).argmax(1).cpu() == ds.labels[i:i + batch_size]).sum())
    return correct / len(ds)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, what: str, epoch: int) -> None:
    """One optimizer step; a non-finite loss stops the run with a one-line error (the last epoch's checkpoint stays,
    so --resume with a lower learning rate continues from it) instead of training on NaNs."""
    if not torch.isfinite(loss):
        raise UserError(f"{what} diverged in epoch {epoch + 1} (the loss is {loss.item()}): "
                        "try a lower learning rate (--resume keeps the finished epochs)")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _prepare(ds: ImageSet, device: torch.device) -> tuple[ImageSet, ImageSet]:
    train, held = split_holdout(ds, HOLDOUT, seed=0)
    if len(train) == 0:
        raise UserError("not enough images to train on")
    return train, held


# ---------------------------------------------------------------------------------------------------------------
# teacher


def train_teacher(ds: ImageSet, output: str, *, arch: str | None = None, schedule: Schedule | None = None,
                  device: str = "auto", seed: int = 0, resume: bool = False) -> dict[str, Any]:
    """Train a CIFAR-style ResNet from scratch on `ds`; writes the teacher model file."""
    dev = pick_device(device)
    with thread_limit(dev, ds.size[0]):
        return _train_teacher(ds, output, arch, schedule, dev, seed, resume)


def _train_teacher(ds, output, arch, schedule, dev, seed, resume) -> dict[str, Any]:
    arch = arch or ("digits" if ds.size[0] <= 16 else "resnet20")
    cfg = make_teacher_config(arch, num_classes=len(ds.classes), classes=ds.classes,
                              in_channels=ds.channels, image_size=ds.size[0])
    if ds.channels == 1 and arch != "digits":
        cfg.update(mean=[0.5], std=[0.25])
    if ds.size[0] != ds.size[1]:
        raise UserError(f"images are {ds.size[1]}x{ds.size[0]}: the models take square images")
    schedule = schedule or Schedule(epochs=30 if arch == "digits" else 30, batch_size=128, lr=0.1)
    g = seed_everything(seed)
    train, held = _prepare(ds, dev)
    model = CifarResNet(cfg).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    ckpt = run_checkpoint(output, "teacher", cfg, schedule.checkpoint_every)
    start = 0
    if resume and (saved := ckpt.load()) is not None:
        model.load_state_dict(saved.model, strict=False)
        opt.load_state_dict(saved.optimizer)
        start = int(saved.meta["epoch"]) + 1
        g.manual_seed(seed + start)
    aug = augmentation(train)
    images = train.images.to(dev)
    labels = train.labels.to(dev)
    t0 = time.time()
    steps_per_epoch = math.ceil(len(train) / schedule.batch_size)
    bar = progress(total=(schedule.epochs - start) * steps_per_epoch, desc="teacher", unit="step")
    for epoch in range(start, schedule.epochs):
        # cosine decay over the whole run: a short schedule still ends at a small learning rate
        set_lr(opt, schedule.lr * warmup_cosine(epoch, schedule.epochs))
        model.train()
        for idx in batches(len(train), schedule.batch_size, g):
            x = aug(to_float(images[idx.to(dev)]), g)
            loss = F.cross_entropy(model(x), labels[idx.to(dev)])
            _step(opt, loss, "teacher training", epoch)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        if ckpt.due():
            ckpt.save(model, opt, {"stage": 0, "epoch": epoch})
        if schedule.max_time is not None and time.time() - t0 > schedule.max_time:
            break
    bar.close()
    model.eval()
    summary = {"output": output, "arch": arch, "data": ds.name, "train_images": len(train),
               "heldout_images": len(held), "epochs": schedule.epochs,
               "train_seconds": round(time.time() - t0, 1),
               "heldout_top1": accuracy(model, held, dev), "device": str(dev)}
    summary["model_id"] = model_file.save_teacher(output, model.cpu(), {"training": summary})
    ckpt.remove()
    return summary


# ---------------------------------------------------------------------------------------------------------------
# student


def distillation_loss(student_out: dict[str, torch.Tensor], teacher_out: dict[str, torch.Tensor],
                      names: list[str]) -> torch.Tensor:
    """Sum of squared feature errors per image, summed over the distilled stages (the paper's MSE 'sum')."""
    first = next(iter(student_out.values()))
    loss = first.new_zeros(())
    for k in names:
        loss = loss + F.mse_loss(student_out[k], teacher_out[k], reduction="sum")
    return loss / first.shape[0]


def rate_bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Bits per image under the prior: -sum log2 p."""
    return -torch.log2(likelihoods).sum() / likelihoods.shape[0]


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float = 0.5, temperature: float = 1.0, mixed: tuple[torch.Tensor, float] | None = None
            ) -> torch.Tensor:
    """(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher || student). mixed = (the partner images' labels,
    lam): the CE is lam * CE(labels) + (1 - lam) * CE(partner labels), as for mixup and CutMix."""
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
                  log_target=True)
    if alpha >= 1.0:
        return t * t * kl
    ce = F.cross_entropy(logits, labels)
    if mixed is not None:
        ce = mixed[1] * ce + (1 - mixed[1]) * F.cross_entropy(logits, mixed[0])
    return (1 - alpha) * ce + alpha * t * t * kl


def mix_images(x: torch.Tensor, how: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each image with a partner from the same batch: mixup (Zhang et al. 2018, a blend lam * x + (1 - lam) *
    partner) or CutMix (Yun et al. 2019, a box of area 1 - lam pasted from the partner), lam ~ U(0, 1) per batch.
    Returns the mixed images, the partners' indices and lam (for CutMix, the area actually kept)."""
    n, _, h, w = x.shape
    partner = torch.randperm(n, generator=generator).to(x.device)
    lam = float(torch.rand((), generator=generator))
    if how == "mixup":
        return lam * x + (1 - lam) * x[partner], partner, lam
    if how != "cutmix":
        raise ValueError(how)
    bh, bw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    top = int(torch.randint(0, h - bh + 1, (), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (), generator=generator))
    x = x.clone()
    x[:, :, top:top + bh, left:left + bw] = x[partner, :, top:top + bh, left:left + bw]
    return x, partner, 1.0 - bh * bw / (h * w)


@torch.no_grad()
def init_from_data(student: Student, x: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Data-dependent initialisation, so that a short run starts learning at once instead of after ~1k steps.

    - The encoder's last convolution is rescaled so the latent spans LATENT_INIT_STD quantisation steps: at the
      default init its std is ~0.15, buried under the bottleneck's U(-0.5, 0.5) noise, so the decoder gets no signal
      and learns to predict the mean feature (what the collapsed CIFAR students did).
    - The decoder's last bias starts at the teacher feature's per-channel mean (~1.5 for ResNet-56's post-ReLU
      layer1): Adam moves a bias by ~lr per step, so starting from 0 costs ~1k steps of reaching for the mean.
    """
    y = student.encode(x)
    gain = LATENT_INIT_STD / float(y.std().clamp_min(1e-6))
    last = student.encoder[-1]
    last.weight.mul_(gain)
    last.bias.mul_(gain)
    student.decoder[-1].bias.copy_(target.float().mean((0, 2, 3)))
    return {"latent_gain": gain, "target_mean": float(target.float().mean())}


def _frozen(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def _check_data(ds: ImageSet, teacher: CifarResNet) -> None:
    tcfg = teacher.config
    if (ds.channels, ds.size[0]) != (int(tcfg["in_channels"]), int(tcfg["image_size"])) or ds.size[0] != ds.size[1]:
        raise UserError(f"the data's images are {ds.channels}x{ds.size[0]}x{ds.size[1]} but the teacher takes "
                        f"{tcfg['in_channels']}x{tcfg['image_size']}x{tcfg['image_size']}")
    if len(ds.classes) != int(tcfg["num_classes"]):
        raise UserError(f"the data has {len(ds.classes)} classes but the teacher predicts {tcfg['num_classes']}")


def train_student(ds: ImageSet, teacher: CifarResNet, output: str, *, beta: float,
                  stage1: Schedule, stage2: Schedule, student_options: dict[str, Any] | None = None,
                  device: str = "auto", seed: int = 0, resume: bool = False,
                  teacher_source: str = "", distill: str = "all", kd_weight: float = 0.0,
                  hard_latent: bool = False, tune_tail: bool = False, init: str | None = None,
                  loss2: Stage2Loss = Stage2Loss()) -> dict[str, Any]:
    """Both stages; writes the student model file (weights + CDF tables + config) and returns a summary.

    distill="all" matches the split feature and every later stage's output (the paper); "head" matches only the
    split feature, which skips the tail in stage 1 and runs the teacher only up to the split (~3x cheaper on CPU);
    "none" matches no feature: the KD loss on the logits (kd_weight > 0) alone, so every bit goes to the classifier.
    kd_weight > 0 adds kd_weight * KD(logits) to stage 1's loss; hard_latent decodes the rounded latent in stage 1;
    tune_tail trains the tail in stage 1 too (at TAIL_LR_SCALE, BatchNorm statistics kept), not only in stage 2.
    init: a student file whose encoder, prior and decoder stage 1 starts from (its architecture is used;
    student_options must then be empty), e.g. to continue a finished stage 1 with another beta or loss.
    stage2.epochs = 0 writes the stage-1 student (tables frozen), which finetune_student can take from there.
    loss2: stage 2's objective (Stage2Loss).
    """
    loss2.check()
    check_stage1_loss(distill, kd_weight)
    for name, v in (("beta", beta), ("kd weight", kd_weight)):
        if v < 0 or not math.isfinite(v):
            raise UserError(f"--{name.replace(' ', '-')} must be a non-negative number, got {v}")
    _check_data(ds, teacher)
    init_student = init_info = None
    if init is not None:
        if student_options:
            raise UserError(f"--init takes the architecture from {init}: drop "
                            + ", ".join(f"--{k.replace('_', '-')}" for k in student_options))
        init_student, model_id = model_file.load_student(init)
        if init_student.config["teacher"] != teacher.config:
            raise UserError(f"--init {init} was distilled from another teacher than the one given")
        student_options = {k: v for k, v in init_student.config.items() if k not in ("teacher", "beta")}
        init_info = {"from": os.path.basename(init), "model_id": model_id,
                     "record": model_file.load(init).meta.get("training", {})}
    dev = pick_device(device)
    objective = {"distill": distill, "kd_weight": float(kd_weight), "hard_latent": bool(hard_latent),
                 "tune_tail": bool(tune_tail)}
    with thread_limit(dev, ds.size[0]):
        return _train_student(ds, teacher, output, beta, stage1, stage2, student_options, dev, seed, resume,
                              teacher_source, objective, init_student, init_info, loss2)


def finetune_student(ds: ImageSet, teacher: CifarResNet, start: str, output: str, *, stage2: Schedule,
                     device: str = "auto", seed: int = 0, resume: bool = False,
                     teacher_source: str = "", loss2: Stage2Loss = Stage2Loss()) -> dict[str, Any]:
    """Stage 2 alone, from a finished student file (e.g. one written with stage2.epochs = 0): the decoder and tail
    are fine-tuned further while the encoder, prior and CDF tables stay bit-identical, so a longer stage 2 does not
    redo stage 1. The summary keeps the start file's training record under "start"."""
    loss2.check()
    _check_data(ds, teacher)
    student, start_id = model_file.load_student(start)
    if student.config["teacher"] != teacher.config:
        raise UserError(f"{start} was distilled from another teacher than the one given")
    start_record = model_file.load(start).meta.get("training", {})
    dev = pick_device(device)
    with thread_limit(dev, ds.size[0]):
        g = seed_everything(seed)
        train, held = _prepare(ds, dev)
        teacher = teacher.to(dev).eval()
        _frozen(teacher)
        # a stage-2-only checkpoint: a full run's checkpoint (which may be in stage 1) is not one of these
        setup = {**student.config, "from": start_id, "stage2_loss": asdict(loss2)}
        ckpt = run_checkpoint(output, "student stage 2", setup, stage2.checkpoint_every)
        state = ckpt.load() if resume else None
        if state is not None:
            load_student_state(student, state.model)
        student.to(dev)
        t_start = time.time()
        record: dict[str, Any] = {}
        _stage2(student, teacher, train, stage2, loss2, ckpt, state, g, seed, dev, record)
        keep = ("beta", "distill", "kd_weight", "hard_latent", "tune_tail", "stage1_init", "stage1_epochs",
                "stage1_seconds", "stage1_head_error", "stage1_head_error_if_mean")
        summary = _finish(student, teacher, output, ds, train, held, dev, teacher_source, t_start, record,
                          {**{k: start_record[k] for k in keep if k in start_record}, "stage2_epochs": stage2.epochs,
                           "stage2_loss": asdict(loss2),
                           "stage2_from": os.path.basename(start), "start": start_record})
    ckpt.remove()
    return summary


def _train_student(ds, teacher, output, beta, stage1, stage2, student_options, dev, seed, resume,
                   teacher_source, objective, init_student, init_info, loss2) -> dict[str, Any]:
    tcfg = teacher.config
    cfg = make_student_config(tcfg, **(student_options or {}))
    cfg["beta"] = float(beta)
    distill, kd_weight, hard_latent = objective["distill"], objective["kd_weight"], objective["hard_latent"]
    g = seed_everything(seed)
    train, held = _prepare(ds, dev)
    teacher = teacher.to(dev).eval()
    _frozen(teacher)
    student = Student(cfg) if init_student is None else init_student
    student.config = cfg            # --init: its encoder, prior and decoder, this run's beta; the teacher's tail
    student.copy_tail_from(teacher.cpu())
    teacher.to(dev)
    student.to(dev)
    aug = augmentation(train)
    # the training set moves to the device once; stage 2's .to(dev) is then a no-op, not a second copy
    train = replace(train, images=train.images.to(dev), labels=train.labels.to(dev))
    images, labels = train.images, train.labels
    # a checkpoint resumes only the same setup: architecture, beta, stage-1 loss and --init file
    setup = {**cfg, "stage1_loss": objective, "init": init_info and init_info["model_id"],
             "stage2_loss": asdict(loss2)}
    ckpt = run_checkpoint(output, "student", setup, stage1.checkpoint_every)
    state = ckpt.load() if resume else None
    # a checkpoint says which stage and epoch finished last: resume right after it
    done_stage, done_epoch = (int(state.meta["stage"]), int(state.meta["epoch"])) if state else (1, -1)
    if state is not None:
        load_student_state(student, state.model)
        student.to(dev)
    head_only = distill == "head"
    with_tail = not head_only or kd_weight > 0          # KD needs the logits
    distilled = {"head": [cfg["split"]], "all": [cfg["split"], *student.tail_names], "none": []}[distill]
    record: dict[str, Any] = dict(state.meta.get("record", {})) if state else {}
    t_start = time.time()

    cached = cached_logits = None
    if head_only and done_stage == 1:
        # head distillation without augmentation: the teacher's split feature (fp16), once per image
        upto = None if kd_weight > 0 else cfg["split"]
        with torch.no_grad():
            parts = [teacher.features(to_float(images[i:i + 500]), upto=upto) for i in range(0, len(train), 500)]
        cached = torch.cat([p[cfg["split"]].half() for p in parts])
        if kd_weight > 0:
            cached_logits = torch.cat([p["logits"] for p in parts])
        del parts

    # ---- stage 1: distillation + beta * rate + aux
    if not objective["tune_tail"]:
        _frozen(student.tail)
        _frozen(student.linear)
    if state is None:
        probe = torch.randperm(len(train), generator=g)[:256].to(dev)
        with torch.no_grad():
            probe_target = (cached[probe] if head_only else
                            teacher.features(to_float(images[probe]), upto=cfg["split"])[cfg["split"]])
        record["init"] = (init_from_data(student, to_float(images[probe]), probe_target) if init_info is None
                          else init_info)
        # what always predicting the mean feature map would score: the head error must end well below it
        record["head_error_if_mean"] = float((probe_target.float() - probe_target.float().mean(0)).pow(2).sum()
                                             / len(probe))
    if done_stage == 1:
        # the prior learns 10x faster than the networks: with few steps it must still track the latent's spread
        prior = [p for p in student.entropy_bottleneck.parameters() if p.requires_grad]
        tail = [p for n, p in student.named_parameters() if p.requires_grad and n.startswith(("tail.", "linear."))]
        nets = [p for n, p in student.named_parameters()
                if p.requires_grad and not n.startswith(("entropy_", "tail.", "linear."))]
        groups = [{"params": nets, "lr_scale": 1.0}, {"params": prior, "lr_scale": PRIOR_LR_SCALE}]
        opt = torch.optim.Adam(groups + ([{"params": tail, "lr_scale": TAIL_LR_SCALE}] if tail else []), lr=stage1.lr)
        start = done_epoch + 1
        if state is not None:
            opt.load_state_dict(state.optimizer)
            g.manual_seed(seed * 1000 + start)
        t0 = time.time()
        steps = math.ceil(len(train) / stage1.batch_size)
        bar = progress(total=max(0, stage1.epochs - start) * steps, desc="student stage 1", unit="step")
        for epoch in range(start, stage1.epochs):
            set_lr(opt, stage1.lr * step_decay(epoch, stage1.epochs))
            student.train()
            student.tail.eval()                      # the tail's BatchNorm statistics stay the teacher's
            sums = {"distill": 0.0, "head": 0.0, "bits": 0.0, "n": 0}
            for idx in batches(len(train), stage1.batch_size, g):
                idx = idx.to(dev)
                if head_only:       # fixed targets, computed once: no augmentation, no teacher pass per step
                    x = to_float(images[idx])
                    target = {cfg["split"]: cached[idx].float()}
                    if cached_logits is not None:
                        target["logits"] = cached_logits[idx]
                else:
                    x = aug(to_float(images[idx]), g)
                    with torch.no_grad():
                        target = teacher.features(x)
                out, likelihoods = student.forward_train(x, with_tail=with_tail, hard=hard_latent)
                feature_loss = distillation_loss(out, target, distilled)
                bits = rate_bits(likelihoods)
                aux = student.entropy_bottleneck.loss()
                loss = feature_loss + beta * bits + aux
                if kd_weight > 0:
                    loss = loss + kd_weight * kd_loss(out["logits"], target["logits"], labels[idx])
                _step(opt, loss, "student stage 1", epoch)
                sums["distill"] += feature_loss.item() * len(idx)
                sums["bits"] += bits.item() * len(idx)
                sums["head"] += distillation_loss(out, target, [cfg["split"]]).item() * len(idx)
                sums["n"] += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, distill=f"{feature_loss.item():.1f}", bits=f"{bits.item():.0f}")
            record["stage1_last_epoch"] = {"epoch": epoch + 1, "distill": sums["distill"] / sums["n"],
                                           "bits_per_image": sums["bits"] / sums["n"],
                                           "head_error": sums["head"] / sums["n"]}
            if ckpt.due():
                ckpt.save(student, opt, {"stage": 1, "epoch": epoch, "record": record})
            if stage1.max_time is not None and time.time() - t0 > stage1.max_time:
                break
        bar.close()
        record["stage1_seconds"] = round(time.time() - t0, 1)
        # the prior's quantiles become CompressAI's integer CDF tables now; stage 2 and the bitstream use them
        student.cpu()
        student.update_tables()
        student.to(dev)
        state = None                              # stage 2 starts afresh after a stage 1 run here

    ckpt.every = stage2.checkpoint_every
    _stage2(student, teacher, train, stage2, loss2, ckpt, state, g, seed, dev, record)
    info = {"beta": beta, **objective, "stage1_epochs": stage1.epochs, "stage2_epochs": stage2.epochs,
            "stage2_loss": asdict(loss2)}
    if init_info is not None:
        info["stage1_init"] = init_info["from"]
    if "stage1_last_epoch" in record:          # the split feature's squared error per image, last stage-1 epoch
        info["stage1_head_error"] = record["stage1_last_epoch"].get("head_error")
    if "head_error_if_mean" in record:
        info["stage1_head_error_if_mean"] = record["head_error_if_mean"]
    summary = _finish(student, teacher, output, ds, train, held, dev, teacher_source, t_start, record, info)
    ckpt.remove()
    return summary


def _stage2(student: Student, teacher: CifarResNet, train: ImageSet, stage2: Schedule, loss2: Stage2Loss,
            ckpt: Checkpoint, state: Saved | None, g: torch.Generator, seed: int, dev: torch.device,
            record: dict[str, Any]) -> None:
    """Stage 2: encoder and prior frozen; the decoder and tail are fine-tuned on the hard-quantised latent of
    augmented images with the KD loss against the teacher's logits on the same images (loss2: its alpha, mixed
    images or not). SGD, x0.1 at half-way.
    `state`: a checkpoint that finished a stage-2 epoch (resume after it), or None."""
    _frozen(student.encoder)
    _frozen(student.entropy_bottleneck)
    for p in list(student.decoder.parameters()) + list(student.tail.parameters()) + list(student.linear.parameters()):
        p.requires_grad_(True)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=stage2.lr, momentum=0.9, weight_decay=5e-4)
    start = 0
    if state is not None and int(state.meta["stage"]) == 2:
        opt.load_state_dict(state.optimizer)
        start = int(state.meta["epoch"]) + 1
        record.update(state.meta.get("record", {}))
        g.manual_seed(seed * 1000 + 500 + start)
    aug = augmentation(train)
    images, labels = train.images.to(dev), train.labels.to(dev)
    t0 = time.time()
    steps = math.ceil(len(train) / stage2.batch_size)
    total = max(0, stage2.epochs - start) * steps
    if stage2.max_images is not None:
        total = min(total, math.ceil(stage2.max_images / stage2.batch_size))
    bar = progress(total=total, desc="student stage 2", unit="step")
    seen = 0
    for epoch in range(start, stage2.epochs):
        set_lr(opt, stage2.lr * step_decay(epoch, stage2.epochs, milestones=(0.5,)))
        student.train()
        student.encoder.eval()
        student.entropy_bottleneck.eval()
        for idx in batches(len(train), stage2.batch_size, g):
            if stage2.max_images is not None and seen >= stage2.max_images:
                break
            seen += len(idx)
            # augmentation matters here: the tail is re-trained on a few thousand images and overfits without it
            idx = idx.to(dev)
            x, y = aug(to_float(images[idx]), g), labels[idx]
            mixed = None
            if loss2.mix != "none":       # the teacher labels the mixed image itself: its function, not a blend
                x, partner, lam = mix_images(x, loss2.mix, g)
                mixed = (y[partner], lam)
            with torch.no_grad():
                t_logits = teacher(x)
                symbols = student.to_symbols(student.encode(x))     # hard rounding, detached (paper's stage 2)
            logits = student.classify_symbols(symbols)
            loss = kd_loss(logits, t_logits, y, alpha=loss2.kd_alpha, temperature=loss2.kd_temperature, mixed=mixed)
            _step(opt, loss, "student stage 2", epoch)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, kd=f"{loss.item():.3f}")
        if ckpt.due():
            ckpt.save(student, opt, {"stage": 2, "epoch": epoch, "record": record})
        if (stage2.max_time is not None and time.time() - t0 > stage2.max_time) or \
                (stage2.max_images is not None and seen >= stage2.max_images):
            break
    bar.close()
    record["stage2_seconds"] = round(time.time() - t0, 1)
    student.eval()


def _finish(student: Student, teacher: CifarResNet, output: str, ds: ImageSet, train: ImageSet, held: ImageSet,
            dev: torch.device, teacher_source: str, t_start: float, record: dict[str, Any],
            info: dict[str, Any]) -> dict[str, Any]:
    """Write the student model file with its training summary (held-out accuracy and bits) and return the summary."""
    cfg = student.config
    summary = {"output": output, "data": ds.name, "teacher": teacher_source, "split": cfg["split"],
               "latent_channels": cfg["latent_channels"], "latent_shape": "x".join(map(str, student.latent_shape)),
               "train_images": len(train), "heldout_images": len(held), **info,
               "train_seconds": round(time.time() - t_start, 1),
               "heldout_top1_teacher": accuracy(teacher, held, dev),
               "heldout_top1_student": accuracy(student, held, dev),
               "heldout_bits_per_image": estimated_bits(student, held, dev),
               **fit_context_prior(student, train, held, dev),
               "device": str(dev)}
    summary.update({k: v for k, v in record.items() if k.endswith("_seconds")})
    summary["model_id"] = model_file.save_student(output, student.cpu(), {"training": summary})
    return summary


def fit_context_prior(student: Student, train: ImageSet, held: ImageSet, device: torch.device) -> dict[str, Any]:
    """Fit the latent's context prior on the training images' latents and keep it if it codes the held-out images
    in fewer bytes than the factorised tables (it does on CIFAR-10; tiny data may not have the counts for it)."""
    held_symbols = encode_images(student, held.images, device)
    student.context_prior = ContextPrior.fit(encode_images(student, train.images, device))
    before, after = (LatentCoder(student, in_context=c).mean_bytes(held_symbols) if len(held) else float("nan")
                     for c in (False, True))
    if not after < before:
        student.context_prior = None
    return {"heldout_bytes_factorised": before, "heldout_bytes_in_context": after,
            "context_prior": student.context_prior is not None}


@torch.no_grad()
def estimated_bits(student: Student, ds: ImageSet, device: torch.device, batch_size: int = 500) -> float:
    """Mean -log2 p of the hard-quantised latent under the prior (the coder lands within a few bytes of it)."""
    if len(ds) == 0:
        return float("nan")
    total = 0.0
    eb = student.entropy_bottleneck.eval()
    for i in range(0, len(ds), batch_size):
        y = student.encode(to_float(ds.images[i:i + batch_size].to(device)))
        _, likelihoods = eb(y)
        total += float(-torch.log2(likelihoods).sum())
    return total / len(ds)


def load_teacher_for_training(path: str) -> CifarResNet:
    teacher = model_file.load_teacher(path)
    teacher.eval()
    return teacher


def default_student_options(image_size: int) -> dict[str, Any]:
    """Bottleneck shapes that suit the data: tiny digits keep a 4x4 latent, 32x32 images an 8x8 one. For CIFAR the
    server-side decoder is 64 wide: at ~85 bytes it gains ~1 point over 32 (docs/STUDENT.md, eighth session), and
    it costs the device nothing."""
    if image_size <= 16:
        return {"encoder_stride": 2, "latent_channels": 8, "encoder_channels": 16, "decoder_channels": 32}
    return {"encoder_stride": 4, "latent_channels": 16, "encoder_channels": 32, "decoder_channels": 64}


def default_schedules(image_size: int) -> tuple[Schedule, Schedule]:
    """(stage 1, stage 2): Adam (2e-3 for 32x32 images) then SGD 1e-2 with momentum; digits train in seconds."""
    if image_size <= 16:
        return Schedule(epochs=8, batch_size=64, lr=2e-3), Schedule(epochs=4, batch_size=64, lr=1e-2)
    return Schedule(epochs=10, batch_size=64, lr=2e-3), Schedule(epochs=5, batch_size=128, lr=1e-2)

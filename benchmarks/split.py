"""Split computing on CIFAR-10: the Entropic Student against sending the image (JPEG, WebP, PNG) to the teacher.

    python -m benchmarks.split [--betas 1,2] [--epochs 12 --epochs2 2] [--test-images 2000] [--out out/bench_split]

For each beta a student is trained from the pretrained ResNet-56 on the CIFAR-10 training JPEGs (cached in --out,
reused when present), then the test images are encoded by the device half and the latents range-coded; bytes are
the real streams (and the frames that `ncodec split send` puts on the wire). Baselines re-encode each test image with
Pillow and let the teacher classify what the server would decode. Also the device encoder's parameters and
multiply-accumulates against the teacher's. Writes JSON and an accuracy-vs-bytes plot; prints tables.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codec.device import device_name, pick_device
from codec.features import model_file
from codec.features import train as T
from codec.features.codec import LatentCoder, classify_symbols, encode_images
from codec.features.data import balanced_prefix, load_dataset, to_float
from codec.features.split import _LEN
from codec.features.student import Student, make_config as make_student_config
from codec.features.teacher import STAGES, count_macs
from codec.progress import print_table, progress, write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN = SHARED / "cifar10" / "cifar10_train_jpeg_first1000_per_class.tar.gz"
TEST = SHARED / "cifar10" / "cifar10_test_jpeg_0000-0799_per_class.tar.gz"
TEACHER = SHARED / "models" / "resnet56-4bfd9763.th"
WIRE_OVERHEAD = _LEN.size + 1          # the split protocol's length prefix and message type per image


@torch.no_grad()
def teacher_accuracy(teacher, images: torch.Tensor, labels: torch.Tensor, dev, batch: int = 500) -> float:
    correct = 0
    for i in range(0, len(labels), batch):
        correct += int((teacher(to_float(images[i:i + batch]).to(dev)).argmax(1).cpu() == labels[i:i + batch]).sum())
    return correct / len(labels)


def reencode(images: torch.Tensor, fmt: str, quality: int | None) -> tuple[torch.Tensor, float]:
    """Each image through Pillow's encoder and back: (decoded uint8 images, mean bytes per image)."""
    out, sizes = [], []
    for img in images.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        kw = {"quality": quality} if quality is not None else {"optimize": True}
        Image.fromarray(img).save(buf, format=fmt, **kw)
        sizes.append(buf.tell())
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous(), float(np.mean(sizes))


def baselines(teacher, images, labels, dev) -> list[dict]:
    rows = []
    settings = [("JPEG", q) for q in (10, 20, 30, 50, 70, 90)] + [("WEBP", q) for q in (5, 10, 20, 30, 50, 70, 90)]
    settings.append(("PNG", None))
    for fmt, q in progress(settings, desc="baselines", unit="setting"):
        decoded, size = reencode(images, fmt, q)
        rows.append({"method": fmt.lower(), "quality": "lossless" if q is None else q, "bytes_per_image": size,
                     "top1": teacher_accuracy(teacher, decoded, labels, dev)})
    return rows


def evaluate_student(student: Student, images, labels, dev) -> dict:
    t0 = time.perf_counter()
    symbols = encode_images(student, images, dev)
    coder = LatentCoder(student)
    streams = [coder.encode(s) for s in symbols]
    enc_ms = (time.perf_counter() - t0) * 1000 / len(labels)
    decoded = np.stack([coder.decode(s) for s in streams])
    assert np.array_equal(decoded, symbols)              # the bitstream is lossless for the latent
    predicted = classify_symbols(student, decoded, dev)
    payload = float(np.mean([len(s) for s in streams]))
    return {"bytes_per_image": payload, "wire_bytes_per_image": payload + WIRE_OVERHEAD,
            "top1": float((torch.from_numpy(predicted) == labels).float().mean()),
            "encode_ms_per_image_batched": enc_ms}


def bytes_needed(curve: list[dict], accuracy: float) -> float | None:
    """Fewest bytes per image at which a baseline curve reaches `accuracy` (linear between measured points)."""
    pts = sorted((r["bytes_per_image"], r["top1"]) for r in curve)
    best = None
    for (b0, a0), (b1, a1) in zip(pts, pts[1:]):
        if a0 >= accuracy:
            cand = b0
        elif a1 >= accuracy and a1 > a0:
            cand = b0 + (accuracy - a0) / (a1 - a0) * (b1 - b0)
        else:
            continue
        best = cand if best is None else min(best, cand)
    if best is None and pts and pts[-1][1] >= accuracy:
        best = pts[-1][0]
    return best


def plot(path: Path, teacher_top1: float, base_rows: list[dict], student_rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bitstream.atomic import atomic_output

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, marker in (("jpeg", "s-"), ("webp", "^-"), ("png", "D")):
        rows = sorted((r for r in base_rows if r["method"] == method), key=lambda r: r["bytes_per_image"])
        ax.plot([r["bytes_per_image"] for r in rows], [100 * r["top1"] for r in rows], marker,
                label=f"{method.upper()} + ResNet-56")
    rows = sorted(student_rows, key=lambda r: r["bytes_per_image"])
    ax.plot([r["bytes_per_image"] for r in rows], [100 * r["top1"] for r in rows], "o-", color="crimson",
            label="Entropic Student (latent bytes)")
    for r in rows:
        ax.annotate(f"β={r['beta']:g}", (r["bytes_per_image"], 100 * r["top1"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)
    ax.axhline(100 * teacher_top1, color="gray", ls="--", lw=1, label="ResNet-56 on the test JPEGs")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image")
    ax.set_ylabel("top-1 accuracy [%]")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--betas", default="1,2", help="comma-separated rate weights")
    p.add_argument("--epochs", type=int, default=12, help="stage-1 epochs per student")
    p.add_argument("--epochs2", type=int, default=2, help="stage-2 epochs per student (the accuracy lever)")
    p.add_argument("--train-images", type=int, default=None, help="class-balanced subset of the 10,000")
    p.add_argument("--test-images", type=int, default=None, help="class-balanced subset of the 8,000")
    p.add_argument("--split", default="layer1")
    p.add_argument("--distill", default="head", choices=["all", "head"], help="stage-1 targets (see train)")
    p.add_argument("--latent-channels", type=int, default=None)
    p.add_argument("--stage2-images", type=int, default=None, help="images seen in stage 2 (default: its epochs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="out/bench_split")
    args = p.parse_args(argv)
    for f in (TRAIN, TEST, TEACHER):
        if not f.exists():
            print(f"benchmarks.split: {f} not found (the benchmark needs ../shared/data)", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(args.device)
    teacher = model_file.load_teacher(str(TEACHER)).to(dev).eval()
    test = load_dataset(str(TEST))
    if args.test_images:
        test = test.subset(balanced_prefix(test.labels, args.test_images))
    t_top1 = teacher_accuracy(teacher, test.images, test.labels, dev)
    print(f"teacher ResNet-56 on {len(test)} test JPEGs: top-1 {100 * t_top1:.2f}%  ({device_name(dev)})")

    cache = out / f"baselines_{len(test)}.json"        # the baselines depend only on the test images
    if cache.exists():
        base_rows = json.loads(cache.read_text())
    else:
        base_rows = baselines(teacher, test.images, test.labels, dev)
        write_json(cache, base_rows)
    print_table(base_rows, ["method", "quality", "bytes_per_image", "top1"], title="the image sent, ResNet-56 classifies")

    train_ds = None
    student_rows = []
    options = T.default_student_options(32)
    options["split"] = args.split
    if args.latent_channels:
        options["latent_channels"] = args.latent_channels
    s1, s2 = T.default_schedules(32)
    s1.epochs, s2.epochs, s2.max_images = args.epochs, args.epochs2, args.stage2_images
    shell = Student(make_student_config(teacher.config, **options))
    x = torch.zeros(1, 3, 32, 32)
    teacher_cpu = teacher.cpu()
    replaced = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1, bias=False), teacher_cpu.conv1,
                                   *[getattr(teacher_cpu, s) for s in STAGES[:STAGES.index(args.split) + 1]])
    cost = {"teacher_macs": count_macs(teacher_cpu, x),
            "teacher_params": sum(p.numel() for p in teacher_cpu.parameters()),
            "encoder_macs": count_macs(shell.encoder, x),
            "encoder_params": sum(p.numel() for p in shell.encoder.parameters()),
            "prior_params": sum(p.numel() for p in shell.entropy_bottleneck.parameters()),
            # the teacher layers the encoder + decoder replace (conv1 and the stages up to the split)
            "replaced_teacher_macs": count_macs(replaced, x) - 9 * 32 * 32}
    cost["encoder_macs_fraction_of_teacher"] = cost["encoder_macs"] / cost["teacher_macs"]
    print_table([{"what": k, "value": v} for k, v in cost.items()], ["what", "value"], title="device-side cost")

    def save(student_rows):
        result = {"machine": device_name(dev), "test_images": len(test), "teacher_top1": t_top1,
                  "baselines": base_rows, "students": student_rows, "cost": cost,
                  "schedule": {"stage1_epochs": args.epochs, "stage2_epochs": args.epochs2,
                               "stage2_images": args.stage2_images, "distill": args.distill,
                               "train_images": args.train_images or 10000}}
        write_json(out / "split.json", result)
        plot(out / "split.png", t_top1, base_rows, student_rows,
             f"CIFAR-10 ({len(test)} test JPEGs), ResNet-56 teacher, {device_name(dev)}")
    for beta in [float(b) for b in args.betas.split(",")]:
        tag = (f"student_{args.split}_c{options['latent_channels']}_{args.distill}_b{beta:g}_"
               f"e{args.epochs}-{args.epochs2}_n{args.train_images or 10000}_s2n{args.stage2_images or 0}")
        path = out / f"{tag}.safetensors"
        if not path.exists():
            if train_ds is None:
                train_ds = load_dataset(str(TRAIN), limit=args.train_images)
            T.train_student(train_ds, teacher.cpu(), str(path), beta=beta, stage1=s1, stage2=s2,
                                      student_options=options, device=args.device, teacher_source=str(TEACHER),
                                      distill=args.distill)
            teacher.to(dev)
        student, model_id = model_file.load_student(str(path))
        student.to(dev)
        meta = model_file.load(str(path)).meta.get("training", {})
        row = {"beta": beta, "model": path.name, **evaluate_student(student, test.images, test.labels, dev),
               "train_seconds": meta.get("train_seconds"), "train_images": meta.get("train_images"),
               "stage1_epochs": meta.get("stage1_epochs"), "stage2_epochs": meta.get("stage2_epochs"),
               # the split feature's squared error per image at the end of stage 1, and always predicting the mean
               "stage1_head_error": meta.get("stage1_head_error"),
               "stage1_head_error_if_mean": meta.get("stage1_head_error_if_mean")}
        need = {m: bytes_needed([r for r in base_rows if r["method"] == m], row["top1"]) for m in ("jpeg", "webp")}
        row["jpeg_bytes_same_top1"], row["webp_bytes_same_top1"] = need["jpeg"], need["webp"]
        row["within_1pt_of_teacher"] = row["top1"] >= t_top1 - 0.01
        student_rows.append(row)
        save(student_rows)
    print_table(student_rows, ["beta", "bytes_per_image", "wire_bytes_per_image", "top1", "jpeg_bytes_same_top1",
                               "webp_bytes_same_top1", "train_seconds"], title="Entropic Student (ResNet-56 teacher)")

    save(student_rows)
    print(f"wrote {out / 'split.json'} and {out / 'split.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

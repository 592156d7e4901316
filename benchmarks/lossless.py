"""Lossless image benchmark: the pc codec (HCLT) against PNG, WebP, JPEG-XL and JPEG 2000, in bits per dimension
of the real files, plus the model's ideal -log2 p and encode/decode speed.

    python -m benchmarks.lossless                                  # small default: scikit-learn's 8x8 digits
    python -m benchmarks.lossless --name mnist \\
        --train ../shared/data/mnist/train-first10k-images-idx3-ubyte.gz \\
        --test ../shared/data/mnist/t10k-images-idx3-ubyte.gz --latents 32 --epochs 60 --shift 1 --smooth 5
    python -m benchmarks.lossless ... --init out/bench_lossless/mnist.pcm --epochs 30 --step-start 0.1 \\
        --step-end 0.02 --out out/phase2                              # continue EM from a model (docs/PC.md)

The pc file is one .ncb for the whole test set (the codec's unit); every classical codec writes one file per
image, as those formats are used. All outputs are decoded again and compared with the input.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import time

import numpy as np
import torch

from benchmarks.meta import machine_line, run_meta
from bitstream.container import Reader
from codec.api import encode_file
from codec.device import device_name, pick_device, seed_everything
from codec.lossless.pc import circuit, model_file
from codec.lossless.pc.codec import PCCodec
from codec.lossless.pc.images import read_images
from codec.lossless.pc.options import PCDecodeOptions, PCOptions
from codec.progress import print_table, write_json


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (values 0..16 as uint8): the first 1200 train, the other 597 test."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.uint8)[..., None]
    return x[:1200], x[1200:]


def _classical(name: str):
    """(encode, decode) for one image [H, W] uint8 -> bytes -> [H, W]."""
    from PIL import Image

    def pil(fmt, **kw):
        def enc(a):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, fmt, **kw)
            return buf.getvalue()
        return enc

    def pil_dec(b):
        a = np.asarray(Image.open(io.BytesIO(b)))
        return a[..., 0] if a.ndim == 3 else a

    if name == "png":
        return pil("PNG", optimize=True, compress_level=9), pil_dec
    if name == "webp":
        return pil("WEBP", lossless=True, quality=100, method=6), pil_dec
    import imagecodecs
    if name == "jpegxl":
        return (lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=9)), imagecodecs.jpegxl_decode
    if name == "jpeg2000":
        return (lambda a: imagecodecs.jpeg2k_encode(a, level=0, reversible=True, codecformat="J2K"),
                imagecodecs.jpeg2k_decode)
    raise ValueError(name)


CLASSICAL = {"png": "PNG (optimize, level 9)", "webp": "WebP lossless (method 6)",
             "jpegxl": "JPEG-XL lossless (effort 9)", "jpeg2000": "JPEG 2000 lossless (J2K, reversible)"}


def classical_rows(test: np.ndarray) -> list[dict]:
    rows = []
    dims = test.size
    for key, label in CLASSICAL.items():
        try:
            enc, dec = _classical(key)
        except ImportError as e:
            rows.append({"codec": label, "note": f"unavailable: {e}"})
            continue
        t0 = time.perf_counter()
        blobs = [enc(a[..., 0]) for a in test]
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = all(np.array_equal(dec(b), a[..., 0]) for b, a in zip(blobs, test))
        t_dec = time.perf_counter() - t0
        rows.append({"codec": label, "bits_per_dim": sum(map(len, blobs)) * 8 / dims, "lossless": ok,
                     "encode_img_s": len(test) / t_enc, "decode_img_s": len(test) / t_dec})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="digits8x8")
    ap.add_argument("--train", nargs="*", default=None, help="Training images (default: sklearn digits).")
    ap.add_argument("--test", nargs="*", default=None, help="Test images (default: sklearn digits).")
    ap.add_argument("--model", default=None, help="Use this .pcm instead of training one.")
    ap.add_argument("--init", default=None, help="Continue EM from this .pcm (a second phase of a schedule).")
    ap.add_argument("--tree-from", default=None,
                    help="Fresh parameters on this .pcm's tree (a model that can join it in a mixture).")
    ap.add_argument("--step-start", type=float, default=0.8, help="First damped EM step.")
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--full-epochs", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--pseudocount", type=float, default=0.1)
    ap.add_argument("--smooth", type=float, default=1.0)
    ap.add_argument("--step-end", type=float, default=0.05, help="Final damped EM step.")
    ap.add_argument("--shift", type=int, default=0, help="Augmentation: random shifts of up to this many pixels.")
    ap.add_argument("--holdout", type=int, default=0, help="Training images held out to keep the best epoch.")
    ap.add_argument("--monitor-test", type=int, default=0,
                    help="Score the first N test images after every epoch (a learning curve; nothing is chosen "
                         "by it).")
    ap.add_argument("--balanced", action="store_true")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--pc-batch", type=int, default=2000, help="Images coded together.")
    ap.add_argument("--device", default="cpu", help="Training device (coding speed is measured on CPU, and on "
                                                    "CUDA too when --device is cuda).")
    ap.add_argument("--no-classical", action="store_true")
    ap.add_argument("--out", default="out/bench_lossless")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run_info = run_meta("benchmarks.lossless", argv)

    seed_everything(args.seed)
    os.makedirs(args.out, exist_ok=True)
    if args.train is None and args.test is None and args.model is None:
        train, test = _digits()
    else:
        if not args.test:
            ap.error("--test is required with --train or --model")
        test = read_images(args.test).pixels
        train = read_images(args.train).pixels if args.train else None
    if args.limit_test:
        test = test[:args.limit_test]
    dev = pick_device(args.device)
    result: dict = {"dataset": args.name, "test_images": len(test), "shape": list(test.shape[1:]),
                    "machine": f"{platform.node()}: {device_name(torch.device('cpu'))}, torch {torch.__version__}",
                    "torch_threads": torch.get_num_threads(), "meta": run_info}

    model_path = os.path.join(args.out, f"{args.name}.pcm")
    if args.model:
        pcm = model_file.load_model(args.model)
        model_path = args.model
        result["train_seconds"] = None
    else:
        if args.limit_train:
            train = train[:args.limit_train]
        cfg = circuit.TrainConfig(latents=args.latents, epochs=args.epochs, full_epochs=args.full_epochs,
                                  batch_size=args.batch_size, pseudocount=args.pseudocount,
                                  full_pseudocount=args.pseudocount, smooth_mass=args.smooth,
                                  step_start=args.step_start, step_end=args.step_end, shift=args.shift,
                                  holdout=args.holdout, balanced=args.balanced, seed=args.seed)
        curve = []
        watch = test[:args.monitor_test].reshape(-1, test[0].size) if args.monitor_test else None
        t0 = time.perf_counter()
        start_pcm = model_file.load_model(args.init) if args.init else None
        start = start_pcm.circuit() if start_pcm else None
        tree_pcm = model_file.load_model(args.tree_from) if args.tree_from else None
        tree = tree_pcm.parent if tree_pcm else None
        model, history = circuit.train(train.reshape(len(train), -1), cfg, dev, shape=train.shape[1:],
                                       valid=watch, init=start, tree=tree, log=lambda epoch, ll, scores: curve.append(
                                           {"epoch": epoch, "seconds": time.perf_counter() - t0, **scores}))
        result["train_seconds"] = time.perf_counter() - t0
        result["train_images"] = len(train)
        result["train_device"] = device_name(dev)
        result["train_config"] = vars(cfg)
        result["init"] = args.init
        result["tree_from"] = args.tree_from
        result["curve_bpd"] = curve       # per epoch: train (during the epoch), holdout / valid (after it)
        result["best_epoch"] = getattr(model, "best_epoch", None)
        meta = {"benchmark": args.name, **vars(cfg), "init_sha256": start_pcm.sha256 if start_pcm else "",
                "tree_sha256": tree_pcm.sha256 if tree_pcm else ""}
        pcm = model_file.from_circuit(model, *train.shape[1:], meta=meta)
        model_file.save_model(pcm, model_path)
        pcm = model_file.load_model(model_path)
    result.update(latents=pcm.latents, model_bytes=os.path.getsize(model_path),
                  ideal_bits_per_dim=circuit.bits_per_dim(pcm.circuit(), test.reshape(len(test), -1)))

    test_path = os.path.join(args.out, f"{args.name}_test.npy")
    np.save(test_path, test[..., 0] if test.shape[3] == 1 else test)
    rows = []
    devices = ["cpu"] + (["cuda"] if dev.type == "cuda" else [])
    for d in devices:
        codec = PCCodec()
        ncb = os.path.join(args.out, f"{args.name}_{d}.ncb")
        enc = encode_file(codec, test_path, ncb, PCOptions(model=model_path, device=d, pc_batch=args.pc_batch),
                          overwrite=True)
        back = os.path.join(args.out, f"{args.name}_{d}_decoded.npy")
        options = PCDecodeOptions(model=model_path, device=d)
        dec = codec.save(codec.open(Reader.from_path(ncb), options), back, options)
        ok = np.array_equal(np.load(back).reshape(test.shape), test)
        rows.append({"codec": f"pc HCLT M={pcm.latents} ({d})", "bits_per_dim": enc["bits_per_dim"], "lossless": ok,
                     "encode_img_s": enc["images_per_s"], "decode_img_s": dec["images_per_s"]})
        result[f"pc_{d}"] = {"file_bits_per_dim": enc["bits_per_dim"], "payload_bits_per_dim":
                             enc["payload_bits_per_dim"], "coder_ideal_bits_per_dim": enc["ideal_bits_per_dim"],
                             "bytes": enc["bytes"], "encode_images_per_s": enc["images_per_s"],
                             "decode_images_per_s": dec["images_per_s"], "lossless": ok,
                             "device": device_name(torch.device(d))}
    result["coding_overhead_bpd"] = result["pc_cpu"]["file_bits_per_dim"] - result["ideal_bits_per_dim"]
    rows.insert(0, {"codec": "pc model ideal -log2 p", "bits_per_dim": result["ideal_bits_per_dim"]})
    if not args.no_classical:
        result["classical"] = classical_rows(test)
        rows += result["classical"]
    print_table(rows, ["codec", "bits_per_dim", "lossless", "encode_img_s", "decode_img_s"],
                title=f"{args.name}: {len(test)} test images {test.shape[1]}x{test.shape[2]}x{test.shape[3]}, "
                      f"{machine_line(run_info)}")
    write_json(os.path.join(args.out, f"{args.name}.json"), result)
    return result


if __name__ == "__main__":
    main()

"""Training images with each one mirrored left-right with probability 1/2: the data of a mixture part that
overfits differently from the part trained on the images as they are (docs/PC.md, "Fashion-MNIST", part f9).

    python -m benchmarks.mirror_images train-images-idx3-ubyte.gz mirrored.npy [--seed 3]

Writes N x H x W (x C) uint8 as .npy, which every `--train` option reads.
"""
from __future__ import annotations

import argparse
import io

import numpy as np

from bitstream.atomic import write_atomic
from codec.lossless.pc.images import read_images


def mirrored(pixels: np.ndarray, seed: int) -> np.ndarray:
    """pixels [N, H, W, C]: a copy with the images picked by numpy's default_rng(seed) (probability 1/2 each)
    flipped along W."""
    flip = np.random.default_rng(seed).random(len(pixels)) < 0.5
    out = pixels.copy()
    out[flip] = out[flip][:, :, ::-1]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="+", help="images (IDX, PNG folder, .npy)")
    ap.add_argument("dst", help="output .npy")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    images = read_images(args.src)
    out = mirrored(images.pixels, args.seed)
    changed = int((out != images.pixels).any(axis=(1, 2, 3)).sum())    # a symmetric image is the same mirrored
    buf = io.BytesIO()
    np.save(buf, out[..., 0] if images.squeeze else out)
    write_atomic(args.dst, buf.getvalue())
    print(f"{args.dst}: {len(out)} images, {changed} changed by mirroring")


if __name__ == "__main__":
    main()

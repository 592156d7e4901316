"""A model file as the zoo ships it: small, and still coded exactly.

    python -m codec.zoo.convert SRC DST        # a .pcm (pc) or a teacher/student .safetensors

pc: the edge and leaf probabilities become 8-bit log-domain codes, xz-compressed (codec/lossless/pc/packed.py;
~2.4 bits per entry, a sixth of float16). The coder turns whatever probabilities a file holds into integer tables
with exact arithmetic (coding.quantize_params), so the packed model is still coded bit-exactly: it is a slightly
different model, whose bits/dim is measured again. Teacher and student: the weights
become float16 (loading casts them back to float32); the student's integer tensors (CDF tables, context-prior
counts) are not touched, so a student's id changes but its coding stays exact. Prints the new file's size and sha256.
"""
from __future__ import annotations

import sys


def convert_pc(src: str, dst: str) -> None:
    from bitstream.atomic import write_atomic
    from codec.lossless.pc import model_file

    m = model_file.load_model(src)
    m.meta = {**m.meta, "packed_from": m.sha256}
    write_atomic(dst, model_file.to_bytes(m, packed_tables=True))
    model_file.load_model(dst)                                          # the result loads


def convert_features(src: str, dst: str) -> None:
    import torch

    from codec.features import model_file

    mf = model_file.load(src)
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in mf.tensors.items()}
    model_file.save(dst, mf.kind, mf.config, tensors, {**mf.meta, "float16_of": mf.model_id})
    (model_file.load_student if mf.kind == "student" else model_file.load_teacher)(dst)   # the result loads
    assert all(v.dtype != torch.float32 for v in model_file.load(dst).tensors.values())


def main(argv: list[str] | None = None) -> int:
    import os

    from codec.zoo import sha256_of, size_text

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dst = args
    with open(src, "rb") as f:
        head = f.read(1 << 16)
    (convert_pc if b"ncodec-pc-hclt" in head else convert_features)(src, dst)
    print(f"{dst}: {size_text(os.path.getsize(dst))} ({os.path.getsize(dst)} bytes), sha256 {sha256_of(dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

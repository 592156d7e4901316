"""Throughput and rate overhead of bitstream.coder against raw constriction on the same symbols and models.

    python -m benchmarks.coder [--json OUT] [--repeats 5] [--quick]

Goal: at least half of raw constriction's symbols/s (our wrapper adds support checks, table validation and
ideal-bit accounting) and at most 0.1% over the ideal bits.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import time
import warnings

import constriction
import numpy as np

from bitstream.coder import (Categorical, CdfTableModel, QuantizedGaussian, QuantizedLaplace, RangeDecoder,
                             RangeEncoder, TableModel)
from benchmarks.meta import machine_line, run_meta
from bitstream.serial import ByteWriter
from codec.progress import print_table, progress, write_json

_cm, _cq = constriction.stream.model, constriction.stream.queue


def _interleaved_best(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best time and last result of each function, the functions taking turns so load changes hit all alike."""
    best, out = {k: float("inf") for k in fns}, {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best, out


def _sample_rows(probs: np.ndarray, rng) -> np.ndarray:
    cdf = np.cumsum(probs, axis=1)
    return (cdf > rng.random((probs.shape[0], 1)) * cdf[:, -1:]).argmax(axis=1).astype(np.int32)


def _cases(rng, quick: bool):
    """(name, symbols, our model, raw encode(coder), raw decode(coder) -> symbols)."""
    scale = 10 if quick else 1
    cases = []

    n = 1_000_000 // scale
    s = np.clip(np.round(rng.laplace(0, 20, n)), -128, 127).astype(np.int32)
    cat = Categorical.fit(s)
    raw = _cm.Categorical(cat.counts.astype(np.float64), perfect=False)
    off = np.int32(cat.min_symbol)
    cases.append((f"Categorical iid K={cat.counts.size}", s, cat,
                  lambda e, s=s, raw=raw, off=off: e.encode(s - off, raw),
                  lambda d, n=n, raw=raw, off=off: d.decode(raw, n) + off))

    lap = QuantizedLaplace(-128, 127, 0.0, 20.0)
    raw = _cm.QuantizedLaplace(-128, 127, 0.0, 20.0)
    cases.append(("QuantizedLaplace iid", s, lap, lambda e, s=s, raw=raw: e.encode(s, raw),
                  lambda d, n=n, raw=raw: d.decode(raw, n)))

    n = 200_000 // scale
    loc, sc = rng.normal(0, 10, n), rng.uniform(0.5, 20, n)
    s2 = np.clip(np.round(rng.laplace(loc, sc)), -128, 127).astype(np.int32)
    lap = QuantizedLaplace(-128, 127, loc, sc)
    fam, params = _cm.QuantizedLaplace(-128, 127), lap._params
    cases.append(("QuantizedLaplace per-symbol", s2, lap, lambda e, s=s2, f=fam, p=params: e.encode(s, f, *p),
                  lambda d, f=fam, p=params: d.decode(f, *p)))
    gauss = QuantizedGaussian(-128, 127, loc, sc)
    fam, params = _cm.QuantizedGaussian(-128, 127), gauss._params
    cases.append(("QuantizedGaussian per-symbol", s2, gauss, lambda e, s=s2, f=fam, p=params: e.encode(s, f, *p),
                  lambda d, f=fam, p=params: d.decode(f, *p)))

    n = 78_400 // scale
    logits = rng.normal(0, 2, (n, 256))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    s3 = _sample_rows(probs, rng)
    fam = _cm.Categorical(perfect=False)
    cases.append(("TableModel K=256", s3, TableModel(probs), lambda e, s=s3, f=fam, p=probs: e.encode(s, f, p),
                  lambda d, f=fam, p=probs: d.decode(f, p)))

    cases.append(_entropy_bottleneck_case(rng, quick))
    return cases


def _entropy_bottleneck_case(rng, quick: bool):
    """CompressAI tables of an untrained 192-channel EntropyBottleneck; the raw coder codes the same per-channel
    categoricals (no escapes occur in this data, so the raw recipe without escape handling is exact)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from compressai.entropy_models import EntropyBottleneck

    torch.manual_seed(0)
    channels, side = 192, (8 if quick else 32)
    eb = EntropyBottleneck(channels)
    eb.update(force=True)
    x = torch.randn(1, channels, side, side) * 2
    with torch.no_grad():
        s = eb.quantize(x, "symbols", eb._get_medians()).numpy().reshape(-1)
        idx = eb._build_indexes(x.size()).numpy().reshape(-1)
    cdf, length, offset = eb._quantized_cdf.numpy(), eb._cdf_length.numpy(), eb._offset.numpy()
    model = CdfTableModel(cdf, length, offset, idx)
    order = np.argsort(idx, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(idx, minlength=channels))])
    raws = [_cm.Categorical(np.diff(cdf[c, :length[c]]).astype(np.float64), perfect=False) for c in range(channels)]
    values = (s - offset[idx]).astype(np.int32)
    assert np.all((values >= 0) & (values < length[idx] - 2)), "benchmark data must not need escapes"

    def enc(e):
        for c in range(channels):
            e.encode(values[order[starts[c]:starts[c + 1]]], raws[c])

    def dec(d):
        out = np.empty(s.size, np.int32)
        for c in range(channels):
            pos = order[starts[c]:starts[c + 1]]
            out[pos] = d.decode(raws[c], pos.size) + offset[c]
        return out

    return f"CdfTableModel C={channels}", s, model, enc, dec


def run(repeats: int = 5, quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, symbols, model, raw_enc, raw_dec in progress(_cases(rng, quick), desc="coder benchmark", unit="case"):
        n = symbols.size

        def ours_encode(symbols=symbols, model=model):
            e = RangeEncoder()
            e.encode(symbols, model)
            return e

        def raw_encode(raw_enc=raw_enc):
            e = _cq.RangeEncoder()
            raw_enc(e)
            return e

        t, res = _interleaved_best({"ours_e": ours_encode, "raw_e": raw_encode}, repeats)
        enc, data, words = res["ours_e"], res["ours_e"].to_bytes(), res["raw_e"].get_compressed()
        t_d, res = _interleaved_best({"ours_d": lambda d=data, m=model, n=n: RangeDecoder(d).decode(m, n),
                                      "raw_d": lambda w=words, f=raw_dec: f(_cq.RangeDecoder(w))}, repeats)
        t.update(t_d)
        t_ours_e, t_raw_e, t_ours_d, t_raw_d = t["ours_e"], t["raw_e"], t["ours_d"], t["raw_d"]
        out, raw_out = res["ours_d"], res["raw_d"]
        assert np.array_equal(out, symbols) and np.array_equal(raw_out, symbols), name
        overhead = 100.0 * (enc.num_bits - enc.ideal_bits) / enc.ideal_bits
        rows.append({
            "model": name, "symbols": n,
            "encode_msym_per_s": n / t_ours_e / 1e6, "raw_encode_msym_per_s": n / t_raw_e / 1e6,
            "encode_ratio": t_raw_e / t_ours_e,
            "decode_msym_per_s": n / t_ours_d / 1e6, "raw_decode_msym_per_s": n / t_raw_d / 1e6,
            "decode_ratio": t_raw_d / t_ours_d,
            "bits_per_symbol": enc.num_bits / n, "over_ideal_%": overhead,
            "goal": "ok" if min(t_raw_e / t_ours_e, t_raw_d / t_ours_d) >= 0.5 and overhead <= 0.1 else "MISS",
        })
    return rows


def table_sizes(quick: bool = False) -> list[dict]:
    """Bytes of a Categorical's stored histogram (rounded minifloat counts) against exact varint counts."""
    rng = np.random.default_rng(1)
    rows = []
    for n in ((10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)):
        s = np.clip(np.round(rng.laplace(0, 18, n)), -127, 127).astype(np.int32)
        fitted, exact = Categorical.fit(s), Categorical.fit(s, mantissa_bits=60)
        w = ByteWriter()
        for c in exact.counts.tolist():
            w.varint(c)
        fitted_bits, exact_bits = fitted.ideal_bits(s), exact.ideal_bits(s)
        rows.append({"weights": n, "alphabet_size": int(exact.counts.size), "varint_counts_bytes": len(w.getvalue()),
                     "exact_table_bytes": len(exact.to_bytes()), "stored_table_bytes": len(fitted.to_bytes()),
                     "rounding_cost_bytes": (fitted_bits - exact_bits) / 8,
                     "total_saved_bytes": len(w.getvalue()) - len(fitted.to_bytes()) - (fitted_bits - exact_bits) / 8})
    return rows


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--repeats", type=int, default=5, help="best of this many runs per timing")
    ap.add_argument("--quick", action="store_true", help="10x fewer symbols (a smoke test)")
    args = ap.parse_args(argv)
    meta = run_meta("benchmarks.coder", argv)
    machine = machine_line(meta)
    rows = run(args.repeats, args.quick)
    print_table(rows, title=f"bitstream.coder vs raw constriction {_version('constriction')} "
                            f"({machine}; best of {args.repeats}, interleaved)")
    print()
    sizes = table_sizes(args.quick)
    print_table(sizes, title="Categorical histogram bytes (Laplace weights, 8-bit symmetric)")
    if args.json:
        write_json(args.json, {"machine": machine, "platform": platform.platform(), "repeats": args.repeats,
                               "constriction": _version("constriction"),
                               "quick": args.quick, "throughput": rows, "categorical_tables": sizes, "meta": meta})


if __name__ == "__main__":
    main()

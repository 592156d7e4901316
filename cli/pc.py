"""`ncodec train pc`: learn an HCLT model file (.pcm) for the pc codec from a set of images."""
from __future__ import annotations

import click

from codec.errors import UserError


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"--{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def _check_output(path: str, overwrite: bool) -> None:
    """Before any work: the folder exists, and an existing model file is replaced only with -y."""
    import os

    from bitstream.atomic import check_output

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"output folder {parent} does not exist")
    check_output(path, overwrite, directory=False)


def _model_for(option: str, path: str | None, shape: tuple[int, int, int]):
    """The .pcm an option names (None without one), refused unless it models images of `shape`."""
    if path is None:
        return None
    from codec.lossless.pc import model_file

    pcm = model_file.load_model(path)
    if pcm.shape != shape:
        raise UserError(f"{option} {path} models {'x'.join(map(str, pcm.shape))} images, these are "
                        f"{'x'.join(map(str, shape))}")
    return pcm


@click.command("pc")
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Model file to write (.pcm).")
@click.option("--latents", type=int, default=16, show_default=True, help="Hidden states per pixel (M).")
@click.option("--epochs", type=int, default=25, show_default=True, help="Mini-batch EM epochs.")
@click.option("--full-epochs", type=int, default=0, show_default=True, help="Full-batch EM passes after them.")
@click.option("--batch-size", type=int, default=512, show_default=True, help="Mini-batch size.")
@click.option("--pseudocount", type=float, default=0.1, show_default=True, help="EM smoothing (counts).")
@click.option("--smooth", "smooth_mass", type=float, default=1.0, show_default=True,
              help="Leaf prior: pseudo-observations spread like each leaf's counts blurred over nearby values.")
@click.option("--limit", type=int, default=None, help="Train on the first N images only.")
@click.option("--step-start", type=float, default=0.8, show_default=True, help="First damped EM step.")
@click.option("--step-end", type=float, default=0.05, show_default=True, help="Last damped EM step (linear decay).")
@click.option("--shift", type=int, default=0, show_default=True,
              help="Augmentation: each mini-batch image moved by a fresh random offset of up to N pixels.")
@click.option("--holdout", type=int, default=0, show_default=True,
              help="Keep N training images out of EM and keep the epoch that scores best on them.")
@click.option("--init", "init_path", default=None,
              help="Continue EM from this .pcm (its tree and parameters): a later, smaller-step phase.")
@click.option("--tree-from", "tree_path", default=None,
              help="Fresh parameters on this .pcm's tree instead of learning one (a model that can join it in "
                   "a mixture, see pc-mix).")
@click.option("--balanced/--chow-liu", default=False, show_default=True,
              help="Balanced (centroid) variable tree of depth O(log D), or the Chow-Liu tree rooted at its centre.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-y/-n", "--overwrite/--no-overwrite", default=False,
              help="-y replaces an existing OUTPUT; -n, the default, refuses it.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train_pc(images, output, latents, epochs, full_epochs, batch_size, pseudocount, smooth_mass, limit, step_start,
             step_end, shift, holdout, init_path, tree_path, balanced, device, seed, overwrite, as_json):
    """Learn a pc model from IMAGES (PNG folder, .npy N x H x W uint8, MNIST IDX files)."""
    import math
    import os
    import time

    from codec.device import pick_device, seed_everything
    from codec.lossless.pc import circuit, model_file
    from codec.lossless.pc.images import read_images
    from codec.progress import print_table, to_json

    for name, v in (("latents", latents), ("epochs", epochs), ("batch-size", batch_size), ("limit", limit)):
        _positive(name, v)
    _positive("full-epochs", full_epochs, allow_zero=True)
    _positive("pseudocount", pseudocount, allow_zero=True)
    _positive("smooth", smooth_mass, allow_zero=True)
    for name, v in (("step-start", step_start), ("step-end", step_end)):
        if not 0 < v <= 1:
            raise UserError(f"--{name} must be in (0, 1], got {v}")
    if latents > model_file.MAX_LATENTS:
        raise UserError(f"--latents must be at most {model_file.MAX_LATENTS}, got {latents}")
    _check_output(output, overwrite)
    dev = pick_device(device)
    seed_everything(seed)
    data = read_images(list(images))
    pixels = data.pixels[:limit] if limit else data.pixels
    n, h, w, c = pixels.shape
    start_pcm = _model_for("--init", init_path, (h, w, c))
    tree_pcm = _model_for("--tree-from", tree_path, (h, w, c))
    start = start_pcm.circuit() if start_pcm else None
    latents = start_pcm.latents if start_pcm else latents
    tree = tree_pcm.parent if tree_pcm else None
    cfg = circuit.TrainConfig(latents=latents, epochs=epochs, full_epochs=full_epochs, batch_size=batch_size,
                              step_start=step_start, step_end=step_end, pseudocount=pseudocount,
                              full_pseudocount=pseudocount, smooth_mass=smooth_mass, shift=shift, holdout=holdout,
                              balanced=balanced, seed=seed)
    t0 = time.perf_counter()
    model, history = circuit.train(pixels.reshape(n, -1), cfg, dev, shape=(h, w, c), init=start, tree=tree)
    seconds = time.perf_counter() - t0
    train_bpd = circuit.bits_per_dim(model, pixels.reshape(n, -1), device=dev)
    meta = {"images": n, "latents": latents, "epochs": epochs, "full_epochs": full_epochs,
            "batch_size": batch_size, "pseudocount": pseudocount, "smooth": smooth_mass, "balanced": balanced,
            "step_start": step_start, "step_end": step_end, "shift": shift, "holdout": holdout,
            "init_sha256": start_pcm.sha256 if start_pcm else "",
            "tree_sha256": tree_pcm.sha256 if tree_pcm else "", "seed": seed, "train_bits_per_dim": train_bpd}
    pcm = model_file.from_circuit(model, h, w, c, meta)
    sha = model_file.save_model(pcm, output)
    summary = {"output": output, "images": n, "height": h, "width": w, "channels": c, "latents": latents,
               "tree": "balanced" if balanced else "chow-liu", "tree_depth": model.depth,
               "epochs": epochs, "full_epochs": full_epochs, "best_epoch": getattr(model, "best_epoch", None),
               "train_bits_per_dim": train_bpd,
               "bits_per_dim_by_epoch": [-ll / (h * w * c * math.log(2)) for ll in history],
               "seconds": seconds, "bytes": os.path.getsize(output), "sha256": sha, "device": str(dev)}
    if as_json:
        click.echo(to_json(summary))
    else:
        rows = [{"field": k, "value": v} for k, v in summary.items() if not isinstance(v, list)]
        print_table(rows, ["field", "value"], title="ncodec train pc")


@click.command("pc-mix")
@click.argument("models", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Model file to write (.pcm).")
@click.option("--weights", default=None, help="Comma-separated mixture weights (default: equal).")
@click.option("-y/-n", "--overwrite/--no-overwrite", default=False,
              help="-y replaces an existing OUTPUT; -n, the default, refuses it.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def mix_pc(models, output, weights, overwrite, as_json):
    """One pc model that is the mixture of MODELS (.pcm files over the same tree, e.g. phases continued from one
    model with other --shift or --seed settings); it codes like any other model."""
    import os

    from codec.lossless.pc import circuit, model_file
    from codec.progress import print_table, to_json

    if len(models) < 2:
        raise UserError("pc-mix needs at least two models")
    _check_output(output, overwrite)
    if weights is not None:
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise UserError(f"--weights {weights!r}: expected numbers separated by commas") from None
    parts = [model_file.load_model(m) for m in models]
    if len({p.shape for p in parts}) != 1:
        raise UserError("the models code images of different shapes: " + ", ".join(
            f"{m} {'x'.join(map(str, p.shape))}" for m, p in zip(models, parts)))
    mix = circuit.mixture([p.circuit() for p in parts], weights)
    meta = {"mixture_of": [p.sha256 for p in parts], "mixture_weights": weights or [1.0 / len(parts)] * len(parts),
            "latents": mix.latents}
    sha = model_file.save_model(model_file.from_circuit(mix, *parts[0].shape, meta), output)
    summary = {"output": output, "models": len(parts), "latents": mix.latents, "bytes": os.path.getsize(output),
               "sha256": sha}
    if as_json:
        click.echo(to_json(summary))
    else:
        print_table([{"field": k, "value": v} for k, v in summary.items()], ["field", "value"],
                    title="ncodec train pc-mix")

"""The `ncodec` command: encode, decode, info, eval, train, split, demo.

Every failure the user can cause ends here as one line on stderr and exit code 2 (`--debug` shows the traceback).
"""
from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Any

import click

from bitstream.errors import BitstreamError
from codec.errors import UserError

EXIT_USAGE = 2

# compressai scripts a few functions at import time; torch now warns about that on every run. Not ours to fix.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


# ---------------------------------------------------------------------------------------------------------------
# options shared by every codec; codec classes add their own through Codec.encode_options / decode_options


def _common_encode_options() -> list[click.Option]:
    return [
        click.Option(["-o", "--output"], required=True, help="Output .ncb file (or folder with several inputs)."),
        click.Option(["--codec"], required=True, help="Codec name (see `ncodec codecs`)."),
        click.Option(["--device"], default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N."),
        click.Option(["--seed"], type=int, default=0, show_default=True, help="Random seed (fits are reproducible)."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON."),
        click.Option(["--frames"], type=int, default=None, help="Use only the first N frames."),
        click.Option(["--crop"], default=None, help="Centre crop HxW, e.g. 640x1280."),
        click.Option(["--model"], default=None, help="Learned model file the codec needs (pc, student)."),
        click.Option(["--epochs"], type=int, default=None, help="Training epochs."),
        click.Option(["--max-time"], type=float, default=None, help="Fitting budget in seconds; the file is finished after it."),
        click.Option(["--size"], default=None, help="Model size in parameters: 0.35M, 0.75M, 1.5M, 3M or any number."),
        click.Option(["--bpp"], type=float, default=None, help="Target bits per pixel (picks the size whose file lands at or under it)."),
        click.Option(["--resume"], is_flag=True, help="Continue from the checkpoint beside the output."),
        click.Option(["--workers"], type=int, default=None,
                     help="Encode on Ray with N parallel tasks (several inputs, or --segment); needs ncodec[distributed]."),
        click.Option(["--ray-address"], default=None, help="Join this Ray cluster instead of starting a local one."),
        click.Option(["--segment"], type=int, default=None,
                     help="Split one video into segments of N frames, fitted in parallel, stored in one file."),
    ]


def _common_decode_options() -> list[click.Option]:
    return [
        click.Option(["-o", "--output"], default=None, help="Output: .y4m, .mkv (FFV1), .mp4, a PNG folder, .npy, .json."),
        click.Option(["--device"], default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N."),
        click.Option(["--model"], default=None, help="Learned model file the codec needs (pc, student)."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON."),
        click.Option(["--frames"], default=None, help="Decode only frames A:B (from 0, B excluded)."),
        click.Option(["--workers"], type=int, default=None,
                     help="Decode the segments of a --segment file in parallel on Ray."),
        click.Option(["--ray-address"], default=None, help="Join this Ray cluster instead of starting a local one."),
    ]


def _merge_options(common: list[click.Option], extra_attr: str) -> list[click.Option]:
    """Common options first, then each codec's own; the first declaration of a name wins."""
    from codec import registry

    seen = {o.name for o in common}
    params = list(common)
    for cls in registry.classes():
        for opt in getattr(cls, extra_attr, []):
            if opt.name not in seen:
                seen.add(opt.name)
                params.append(opt)
    return params


def _report(summary: dict[str, Any], as_json: bool, title: str) -> None:
    from codec.progress import print_table, to_json

    if as_json:
        click.echo(to_json(summary))
        return
    rows = [{"field": k, "value": v} for k, v in summary.items() if not isinstance(v, (list, dict))]
    print_table(rows, ["field", "value"], title=title)
    _print_item_tables(summary)


def _print_item_tables(summary: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Each list of dicts in a summary (clips of a batch, groups, videos of a library...) as a table of its own."""
    from codec.progress import print_table

    for key, value in summary.items():
        if key not in skip and isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            print_table(value, title=key)


def _check_output_writable(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise UserError(f"output folder {parent} does not exist")


# ---------------------------------------------------------------------------------------------------------------
# commands


class NcodecGroup(click.Group):
    """Builds `encode`/`decode` lazily so that codec modules (torch) load only when they are needed."""

    def get_command(self, ctx, name):
        if name == "encode":
            return _encode_command()
        if name == "decode":
            return _decode_command()
        return super().get_command(ctx, name)

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | {"encode", "decode"})


@click.group(cls=NcodecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="ncodec")
@click.pass_context
def cli(ctx, debug):
    """ncodec: neural compression codecs (video INRs, lossless PC images, split-computing features)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _encode_command() -> click.Command:
    def run(inputs, **opts):
        from codec import registry

        if not inputs:
            raise UserError("encode needs at least one input")
        codec = registry.get(opts["codec"])
        _check_output_writable(opts["output"])
        if opts.get("frames") is not None and opts["frames"] <= 0:
            raise UserError(f"--frames must be positive, got {opts['frames']}")
        if opts.get("max_time") is not None and opts["max_time"] <= 0:
            raise UserError(f"--max-time must be positive, got {opts['max_time']}")
        if opts.get("epochs") is not None and opts["epochs"] <= 0:
            raise UserError(f"--epochs must be positive, got {opts['epochs']}")
        if opts.get("bpp") is not None and opts["bpp"] <= 0:
            raise UserError(f"--bpp must be positive, got {opts['bpp']}")
        for key in ("workers", "segment"):
            if opts.get(key) is not None and opts[key] <= 0:
                raise UserError(f"--{key} must be positive, got {opts[key]}")
        opts["json"] = opts.pop("as_json")
        many_in_one = getattr(codec, "takes_many_inputs", False)
        if many_in_one and opts.get("workers") is not None:
            raise UserError(f"--workers does not apply to {codec.name}: all inputs go into one file")
        several = len(inputs) > 1 and not many_in_one
        if opts.get("segment") is not None:
            if len(inputs) != 1:
                raise UserError("--segment splits one video: give exactly one input")
            from codec import distributed
            summary = distributed.encode_segmented(inputs[0], opts["output"], opts)
        elif opts.get("workers") is not None or several:
            from codec import distributed
            summary = distributed.encode_many(list(inputs), opts["output"], opts)
        else:
            summary = codec.encode(list(inputs), opts["output"], opts)
        _report(summary, opts["json"], f"ncodec encode ({codec.name})")

    params = [click.Argument(["inputs"], nargs=-1)] + _merge_options(_common_encode_options(), "encode_options")
    return click.Command("encode", callback=run, params=params,
                         help="Encode INPUTS into a .ncb file with --codec.")


def _decode_command() -> click.Command:
    def run(bitstream_file, **opts):
        from bitstream.container import Reader
        from codec import registry

        reader = Reader.from_path(bitstream_file)
        codec = registry.get(reader.codec)
        if opts.get("output"):
            _check_output_writable(opts["output"])
        opts["json"] = opts.pop("as_json")
        if opts.get("workers") is not None and opts["workers"] <= 0:
            raise UserError(f"--workers must be positive, got {opts['workers']}")
        summary = registry.decode_file(reader, opts.get("output"), opts)
        _report(summary, opts["json"], f"ncodec decode ({codec.name})")

    params = [click.Argument(["bitstream_file"])] + _merge_options(_common_decode_options(), "decode_options")
    return click.Command("decode", callback=run, params=params,
                         help="Decode a .ncb file (the codec is read from the file).")


@cli.command()
@click.argument("bitstream_file")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(bitstream_file, as_json):
    """Show a .ncb file's codec, header and sections with their sizes."""
    from bitstream.container import Reader
    from codec import registry
    from codec.progress import print_table, to_json

    reader = Reader.from_path(bitstream_file)
    summary: dict[str, Any] = {
        "file": bitstream_file,
        "bytes": reader.file_size,
        "format": "%d.%d" % tuple(reader.format_version),
        "codec": reader.codec,
        "codec_version": reader.codec_version,
        "header": dict(reader.header),
        "sections": [{"name": s.name, "bytes": s.length, "required": s.required, "crc32": f"{s.crc32:08x}"}
                     for s in reader.sections],
    }
    summary.update(registry.file_info(reader))
    if as_json:
        click.echo(to_json(summary))
        return
    top = [{"field": k, "value": v} for k, v in summary.items() if not isinstance(v, (dict, list))]
    top += [{"field": k, "value": v if not isinstance(v, bytes) else v.hex()} for k, v in summary["header"].items()]
    print_table(top, ["field", "value"], title=f"{bitstream_file}")
    print_table(summary["sections"], ["name", "bytes", "required", "crc32"], title="sections")
    _print_item_tables(summary, skip=("sections",))


@cli.command()
@click.argument("library")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--frames", type=int, default=None, help="Use only the first N frames of each input.")
@click.option("--crop", default=None, help="Centre crop HxW.")
@click.option("--epochs", type=int, default=None, help="Training epochs for the new session.")
@click.option("--max-time", type=float, default=None, help="Fitting budget in seconds.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def append(library, inputs, **opts):
    """Add INPUTS to an existing LIBRARY file (PFNR) without refitting what it holds."""
    from bitstream.container import Reader
    from codec import registry

    reader = Reader.from_path(library)
    codec = registry.get(reader.codec)
    opts["json"] = opts.pop("as_json")
    summary = codec.append(library, list(inputs), opts)
    _report(summary, opts["json"], f"ncodec append ({codec.name})")


@cli.command(name="eval")
@click.argument("reference")
@click.argument("decoded")
@click.option("--bitstream", "bitstream_file", default=None, help="The .ncb (or any file) whose size gives bpp.")
@click.option("--frames", type=int, default=None, help="Compare only the first N frames.")
@click.option("--crop", default=None, help="Centre crop HxW applied to the reference (as at encode time).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def eval_(reference, decoded, bitstream_file, frames, crop, as_json):
    """PSNR, MS-SSIM and bpp of DECODED against REFERENCE."""
    from codec.video import metrics
    from codec.video.io import parse_crop, read_video

    ref = read_video(reference, frames=frames, crop=parse_crop(crop) if crop else None)
    dec = read_video(decoded, frames=frames)
    if ref.frames.shape != dec.frames.shape:
        raise UserError(f"shapes differ: reference {tuple(ref.frames.shape)} vs decoded {tuple(dec.frames.shape)}")
    p_mean, _ = metrics.psnr(ref.frames, dec.frames)
    summary = {"frames": int(ref.frames.shape[0]), "height": int(ref.frames.shape[1]),
               "width": int(ref.frames.shape[2]), "psnr_rgb": float(p_mean),
               "ms_ssim_rgb": float(metrics.ms_ssim(ref.frames, dec.frames))}
    if bitstream_file:
        t, h, w = ref.frames.shape[:3]
        summary["bytes"] = os.path.getsize(bitstream_file)
        summary["bpp"] = metrics.bpp(summary["bytes"], t, h, w)
    _report(summary, as_json, "ncodec eval")


@cli.command()
def codecs():
    """List the registered codecs."""
    from codec import registry
    from codec.progress import print_table

    rows = [{"codec": c.name, "kind": c.kind, "version": c.version, "description": c.description}
            for c in registry.classes()]
    print_table(rows, ["codec", "kind", "version", "description"])


@cli.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, help="Folder for the files the demo writes.")
@click.option("--max-time", type=float, default=150.0, show_default=True, help="Fitting budget in seconds.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def demo(out_dir, max_time, device, as_json):
    """Encode the bundled carphone clip with HNeRV, decode it, compare with x265 (the main job in one command)."""
    from codec.video.demo import run_demo

    run_demo(out_dir=out_dir, max_time=max_time, device=device, as_json=as_json)


@cli.group()
def train():
    """Train the learned models that some codecs use (pc, teacher, student)."""


def _attach_optional_commands() -> None:
    """Commands that live beside their codec family; absent families leave the rest of the CLI working."""
    import importlib

    for module, attr, group, name in (
        ("cli.pc", "train_pc", train, "pc"),
        ("cli.pc", "mix_pc", train, "pc-mix"),
        ("cli.student", "train_teacher", train, "teacher"),
        ("cli.student", "train_student", train, "student"),
        ("cli.student", "split", cli, "split"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        group.add_command(getattr(mod, attr), name)


_attach_optional_commands()


# ---------------------------------------------------------------------------------------------------------------


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split()) or "unknown error"


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI, turns every user-caused failure into one line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="ncodec", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("ncodec: aborted", err=True)
        return 130
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"ncodec: error: {_one_line(e.format_message())}", err=True)
        return EXIT_USAGE
    except (UserError, BitstreamError) as e:
        if debug:
            raise
        kind = "invalid bitstream" if isinstance(e, BitstreamError) else "error"
        click.echo(f"ncodec: {kind}: {_one_line(str(e))}", err=True)
        return EXIT_USAGE
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        click.echo(f"ncodec: error: {_one_line(e.strerror or str(e))}{where}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("ncodec: interrupted", err=True)
        return 130
    except Exception as e:  # a bug of ours: still one line, but say so and how to see more
        if debug:
            raise
        click.echo(f"ncodec: internal error: {type(e).__name__}: {_one_line(str(e))} "
                   f"(run with --debug for the traceback)", err=True)
        traceback.clear_frames(e.__traceback__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

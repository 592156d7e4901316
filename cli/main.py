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
# options the CLI adds to every codec's own (codec/options.py builds those)

SCALE_HELP = "Encode on Ray with N parallel tasks (several inputs, or --segment); needs ncodec[distributed]."


def _encode_run_options(codec: str | None) -> list[click.Option]:
    opts = [
        click.Option(["-o", "--output"], required=True, help="Output .ncb file (or folder with several inputs)."),
        click.Option(["--codec"], required=True, help="Codec name (`ncodec codecs`); `--codec X --help` shows its "
                                                      "options."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON."),
        click.Option(["--workers"], type=int, default=None, help=SCALE_HELP),
        click.Option(["--ray-address"], default=None, help="Join this Ray cluster instead of starting a local one."),
    ]
    if codec in SEGMENTABLE:
        opts.append(click.Option(["--segment"], type=int, default=None,
                                 help="Split one video into segments of N frames, fitted in parallel, stored in one "
                                      "file."))
    return opts


# the codecs whose Codec.segmentable is true, named here so that help needs no codec import (a test keeps them equal)
SEGMENTABLE = {"nerv", "hnerv", "nervpp", "nirvana"}


def _decode_run_options() -> list[click.Option]:
    return [
        click.Option(["-o", "--output"], default=None,
                     help="Output: .y4m, .mkv (FFV1), .mp4, a PNG folder (video); a PNG folder or .npy (pc); "
                          ".json (student)."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON."),
        click.Option(["--workers"], type=int, default=None,
                     help="Decode the segments of a --segment file in parallel on Ray."),
        click.Option(["--ray-address"], default=None, help="Join this Ray cluster instead of starting a local one."),
    ]


def _decode_codec_options() -> list[click.Option]:
    """Every codec's decode options, each once (the file names the codec only once it is read)."""
    from cli.options import click_options
    from codec import registry

    seen, out = set(), []
    for name in registry.names():
        for opt in click_options(registry.decode_options(name)):
            if opt.name not in seen:
                seen.add(opt.name)
                out.append(opt)
    return out


def _report(summary: dict[str, Any], as_json: bool, title: str) -> None:
    from codec.progress import print_table, to_json

    if as_json:
        click.echo(to_json(summary))
        return
    # lists, dicts and arrays (per-frame values) print as tables of their own or go to --json only
    rows = [{"field": k, "value": v} for k, v in summary.items()
            if not isinstance(v, (list, dict)) and not hasattr(v, "shape")]
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


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


# ---------------------------------------------------------------------------------------------------------------
# commands


class NcodecGroup(click.Group):
    """Builds `encode`/`decode` when they are called: `encode` from the --codec it is given, so its help and its
    flags are that codec's; nothing imports torch before a command needs it."""

    def resolve_command(self, ctx, args):
        self._args = list(args)
        return super().resolve_command(ctx, args)

    def get_command(self, ctx, name):
        if name == "encode":
            return _encode_command(_codec_in(getattr(self, "_args", [])))
        if name == "decode":
            return _decode_command()
        return super().get_command(ctx, name)

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | {"encode", "decode"})


def _codec_in(args: list[str]) -> str | None:
    """The value of --codec in the arguments, if any."""
    for i, a in enumerate(args):
        if a == "--codec" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--codec="):
            return a.split("=", 1)[1]
    return None


@click.group(cls=NcodecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="ncodec")
@click.pass_context
def cli(ctx, debug):
    """ncodec: neural compression codecs (video INRs, lossless PC images, split-computing features)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _encode_command(codec_name: str | None) -> click.Command:
    from cli.options import click_options, given
    from codec import registry

    options_cls = registry.options(codec_name) if codec_name in registry.CODECS else None

    def run(inputs, codec, output, as_json, workers, ray_address, segment=None, **values):
        from codec import api

        if not inputs:
            raise UserError("encode needs at least one input")
        if options_cls is None:
            registry.get(codec)                      # the one-line "unknown codec" error
        _check_output_writable(output)
        _positive("--workers", workers)
        _positive("--segment", segment)
        options = options_cls.from_kwargs(given(values, options_cls), codec)
        c = registry.get(codec)
        if c.many_inputs and workers is not None:
            raise UserError(f"--workers does not apply to {codec}: all inputs go into one file")
        if segment is not None:
            if len(inputs) != 1:
                raise UserError("--segment splits one video: give exactly one input")
            from codec.scale import segments
            summary = segments.encode_segmented(c, inputs[0], output, options, segment, workers, ray_address)
        elif workers is not None or (len(inputs) > 1 and not c.many_inputs):
            from codec.scale import clips
            summary = clips.encode_many(c, list(inputs), output, options, workers, ray_address)
        else:
            summary = api.encode_file(c, list(inputs) if c.many_inputs else inputs[0], output, options)
        _report(summary, as_json, f"ncodec encode ({codec})")

    params = [click.Argument(["inputs"], nargs=-1)] + _encode_run_options(codec_name)
    if options_cls is not None:
        params += click_options(options_cls)
    epilog = None if options_cls else "Options of a codec: ncodec encode --codec NAME --help (`ncodec codecs`)."
    return click.Command("encode", callback=run, params=params, epilog=epilog,
                         help="Encode INPUTS into a .ncb file with --codec.")


def _decode_command() -> click.Command:
    def run(bitstream_file, output, as_json, workers, ray_address, **values):
        from bitstream.container import Reader
        from cli.options import given
        from codec import registry

        reader = Reader.from_path(bitstream_file)
        if output:
            _check_output_writable(output)
        _positive("--workers", workers)
        codec = registry.get(reader.codec)
        options_cls = registry.decode_options(reader.codec)
        typed = {k: v for k, v in values.items() if v is not None}
        wrong = sorted(set(typed) - set(given(typed, options_cls)))
        if wrong:
            raise UserError(f"--{wrong[0].replace('_', '-')} does not apply to a {reader.codec} file")
        options = options_cls.from_kwargs(typed, reader.codec)
        codec.check_output(output)
        decoded = codec.open(reader, options)
        if workers is not None:
            from codec.scale import segments
            summary = segments.decode_parallel(codec, decoded, output, options, workers, ray_address)
        else:
            summary = codec.save(decoded, output, options)
        _report(summary, as_json, f"ncodec decode ({codec.name})")

    params = [click.Argument(["bitstream_file"])] + _decode_run_options() + _decode_codec_options()
    return click.Command("decode", callback=run, params=params,
                         help="Decode a .ncb file (the codec is read from the file).")


@cli.command()
@click.argument("bitstream_file")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(bitstream_file, as_json):
    """Show a .ncb file's codec, header and sections with their sizes."""
    from codec import api
    from codec.progress import print_table, to_json

    summary = api.info(bitstream_file)
    if as_json:
        click.echo(to_json(summary))
        return
    top = [{"field": k, "value": v} for k, v in summary.items() if not isinstance(v, (dict, list))]
    top += [{"field": k, "value": v if not isinstance(v, bytes) else v.hex()} for k, v in summary["header"].items()]
    print_table(top, ["field", "value"], title=f"{bitstream_file}")
    print_table(summary["sections"], ["name", "bytes", "required", "crc32"], title="sections")
    _print_item_tables(summary, skip=("sections",))


def _append_command() -> click.Command:
    from cli.options import click_options, given
    from codec.video.options import PFNROptions

    def run(library, inputs, as_json, **values):
        from bitstream.container import Reader
        from codec import registry

        reader = Reader.from_path(library)
        codec = registry.get(reader.codec)
        if not hasattr(codec, "append"):
            raise UserError(f"{library} is a {reader.codec!r} file: only pfnr libraries can be appended to")
        options = PFNROptions.from_kwargs(given(values, PFNROptions), codec.name)
        summary = codec.append(library, list(inputs), options)
        _report(summary, as_json, f"ncodec append ({codec.name})")

    library_fields = {"size", "density", "weight_bits", "lr", "batch_size"}     # fixed by the library
    params = [click.Argument(["library"]), click.Argument(["inputs"], nargs=-1, required=True),
              click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON.")]
    params += click_options(PFNROptions, skip=library_fields)
    return click.Command("append", callback=run, params=params,
                         help="Add INPUTS to an existing LIBRARY file (PFNR) without refitting what it holds.")


@cli.command(name="eval")
@click.argument("reference")
@click.argument("decoded")
@click.option("--bitstream", "bitstream_file", default=None, help="The .ncb (or any file) whose size gives bpp.")
@click.option("--max-frames", "frames", type=int, default=None, help="Compare only the first N frames.")
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
    """List the codecs."""
    from codec import registry
    from codec.progress import print_table

    rows = []
    for name in registry.names():
        c = registry.get(name)
        rows.append({"codec": c.name, "kind": c.kind, "version": c.version, "description": c.description})
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
cli.add_command(_append_command(), "append")


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
        if getattr(e, "rows", None):        # a scale-out run that partly failed: what was written
            from codec.progress import print_table
            print_table(e.rows, ["file", "bpp", "psnr", "fit_seconds", "worker", "status"], title="written")
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

"""The `ncodec` command: encode, decode, info, eval, train, split, demo.

Every failure the user can cause ends here as one line on stderr and exit code 2 (`--debug` shows the traceback).
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import Any

import click

from bitstream.errors import BitstreamError
from codec.errors import UnverifiedOutputWarning, UserError

EXIT_USAGE = 2


# ---------------------------------------------------------------------------------------------------------------
# options the CLI adds to every codec's own (codec/options.py builds those)

SCALE_HELP = "Encode on Ray with N parallel tasks (several inputs, or --segment); needs ncodec[distributed]."


def _overwrite_option() -> click.Option:
    return click.Option(["-y/-n", "--overwrite/--no-overwrite"], default=False,
                        help="-y replaces an existing output (a file, or a PNG folder of ncodec's frames only); -n, "
                             "the default, refuses it. Devices, FIFOs and sockets are never replaced.")


def _checkpoint_options() -> list[click.Option]:
    """The run options of a fitting codec's checkpoint (codec.base.Job), beside its --resume."""
    return [
        click.Option(["--checkpoint-every"], type=float, default=60.0, show_default=True, metavar="S",
                     help="Seconds between checkpoints of the fit (one is also written on Ctrl-C or SIGTERM)."),
        click.Option(["--keep-checkpoint"], is_flag=True,
                     help="Keep OUTPUT.ckpt.safetensors after success (by default it is deleted)."),
    ]


def _encode_run_options(codec: str | None) -> list[click.Option]:
    opts = [
        click.Option(["-o", "--output"], required=True,
                     help="Output .ncb file (or folder with several inputs); - writes the .ncb to standard output "
                          "(the summary then goes to stderr)."),
        click.Option(["-v", "--verbose"], is_flag=True,
                     help="Also print the fit's history table (--json always has it)."),
        click.Option(["--codec"], required=True, help="Codec name (`ncodec codecs`); `--codec X --help` shows its "
                                                      "options."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON."),
        click.Option(["--workers"], type=int, default=None, help=SCALE_HELP),
        click.Option(["--ray-address"], default=None, help="Join this Ray cluster instead of starting a local one."),
        _overwrite_option(),
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
                     help="Output: .y4m, .mkv (FFV1), .mp4, a PNG folder, or - (y4m on standard output) for video; "
                          "a PNG folder or .npy (pc); .json (student)."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON."),
        click.Option(["--workers"], type=int, default=None,
                     help="Decode the segments of a --segment file in parallel on Ray."),
        click.Option(["--ray-address"], default=None, help="Join this Ray cluster instead of starting a local one."),
        _overwrite_option(),
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


def _report(summary: dict[str, Any], as_json: bool, title: str, verbose: bool = False, err: bool = False) -> None:
    """The summary as JSON or as tables; `err`: on stderr (standard output carries the data: `-o -`). A fit's
    history table only with `verbose` (JSON always has it)."""
    from codec.progress import print_table, to_json

    file = sys.stderr if err else None
    if as_json:
        click.echo(to_json(summary), err=err)
        return
    # lists, dicts and arrays (per-frame values) print as tables of their own or go to --json only
    rows = [{"field": k, "value": v} for k, v in summary.items()
            if not isinstance(v, (list, dict)) and not hasattr(v, "shape")]
    print_table(rows, ["field", "value"], title=title, file=file)
    _print_item_tables(summary, skip=() if verbose else ("history",), file=file)


def _print_item_tables(summary: dict[str, Any], skip: tuple[str, ...] = (), file=None) -> None:
    """Each list of dicts in a summary (clips of a batch, groups, videos of a library...) as a table of its own."""
    from codec.progress import print_table

    for key, value in summary.items():
        if key not in skip and isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            print_table(value, title=key, file=file)


def _check_output_writable(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise UserError(f"output folder {parent} does not exist")


def _check_clip_outputs(output: str, inputs: list[str], overwrite: bool) -> None:
    """Many clips: the folder may exist (a rerun skips what its manifest records complete), but a clip file there
    that the manifest does not know is someone else's."""
    from pathlib import Path

    from bitstream.atomic import check_output
    from codec.scale.clips import output_names
    from codec.scale.manifest import MANIFEST, Manifest

    if not os.path.isdir(output):
        return
    recorded = Manifest(Path(output) / MANIFEST).entries
    for name in output_names(inputs):
        if name not in recorded:
            check_output(Path(output) / name, overwrite, directory=False)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a fit that left a checkpoint: `resume` is the command that continues it."""

    def __init__(self, resume: str):
        super().__init__(resume)
        self.resume = resume


def _resume_command() -> str:
    """The command line that was run, plus --resume."""
    argv = list((click.get_current_context().find_root().obj or {}).get("argv", []))
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["ncodec", *argv])


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

    def run(inputs, codec, output, as_json, workers, ray_address, overwrite, verbose=False, segment=None,
            checkpoint_every=60.0, keep_checkpoint=False, **values):
        from bitstream.atomic import check_output
        from codec import api
        from codec.base import Job

        if not inputs:
            raise UserError("encode needs at least one input")
        if options_cls is None:
            registry.get(codec)                      # the one-line "unknown codec" error
        to_stdout = output == STDIO
        if not to_stdout:
            _check_output_writable(output)
        _check_stdio(codec, list(inputs), to_stdout, workers, segment, values.get("resume"))
        _positive("--workers", workers)
        _positive("--segment", segment)
        if checkpoint_every < 0:
            raise UserError(f"--checkpoint-every must be >= 0 seconds, got {checkpoint_every}")
        options = options_cls.from_kwargs(given(values, options_cls), codec)
        c = registry.get(codec)
        if c.many_inputs and workers is not None:
            raise UserError(f"--workers does not apply to {codec}: all inputs go into one file")
        many = segment is None and (workers is not None or (len(inputs) > 1 and not c.many_inputs))
        if to_stdout and many:
            raise UserError("-o - writes one .ncb to standard output: give one input (or a pfnr library's inputs)")
        if STDIO in inputs and c.kind != "video":
            raise UserError(f"- reads y4m video from standard input; {codec} encodes {c.kind} files")
        if many:
            _check_clip_outputs(output, list(inputs), overwrite)
        elif not to_stdout:
            check_output(output, overwrite, directory=False)     # before any fitting
        if to_stdout:           # no checkpoint: a pipe leaves nothing to resume beside it
            summary = _encode_to_stdout(c, list(inputs) if c.many_inputs else inputs[0], options)
        elif segment is not None:
            if len(inputs) != 1:
                raise UserError("--segment splits one video: give exactly one input")
            from codec.scale import segments
            summary = segments.encode_segmented(c, inputs[0], output, options, segment, workers, ray_address)
        elif many:
            from codec.scale import clips
            summary = clips.encode_many(c, list(inputs), output, options, workers, ray_address)
        else:
            job = Job(checkpoint=api.checkpoint_prefix(output), checkpoint_every=checkpoint_every,
                      keep_checkpoint=keep_checkpoint)
            started = time.time()
            try:
                summary = api.encode_file(c, list(inputs) if c.many_inputs else inputs[0], output, options, job,
                                          overwrite=overwrite)
            except KeyboardInterrupt:
                ckpt = job.checkpoint + ".safetensors"
                if resumable and os.path.exists(ckpt) and os.path.getmtime(ckpt) >= started - 1:
                    raise Interrupted(_resume_command()) from None
                raise
        _report(summary, as_json, f"ncodec encode ({codec})", verbose=verbose, err=to_stdout)

    resumable = options_cls is not None and "resume" in options_cls.__dataclass_fields__
    params = [click.Argument(["inputs"], nargs=-1)] + _encode_run_options(codec_name)
    if resumable:
        params += _checkpoint_options()
    if options_cls is not None:
        params += click_options(options_cls)
    epilog = None if options_cls else "Options of a codec: ncodec encode --codec NAME --help (`ncodec codecs`)."
    return click.Command("encode", callback=run, params=params, epilog=epilog,
                         help="Encode INPUTS into a .ncb file with --codec. An input - reads y4m from standard "
                              "input (e.g. ffmpeg -i clip.mp4 -f yuv4mpegpipe - | ncodec encode - -o clip.ncb ...).")


STDIO = "-"    # an input or output named "-": standard input (y4m) or standard output (y4m, or an encode's .ncb)


def _check_stdio(codec: str, inputs: list[str], to_stdout: bool, workers, segment, resume) -> None:
    """What "-" cannot do: be read twice, or go to Ray tasks or --segment (they read and write files)."""
    if inputs.count(STDIO) > 1:
        raise UserError("- (standard input) can be given once")
    if STDIO in inputs or to_stdout:
        for name, value in (("--workers", workers), ("--segment", segment)):
            if value is not None:
                raise UserError(f"{name} reads and writes files: save the y4m to a file, or drop {name}, "
                                f"to use - (standard input or output)")
    if to_stdout and resume:
        raise UserError("--resume continues from the checkpoint beside a file output; -o - keeps none")
    if to_stdout:
        _check_stdout_not_terminal()


def _check_stdout_not_terminal() -> None:
    if sys.stdout.isatty():
        raise UserError("-o - writes binary data to standard output, which is a terminal: redirect it (> file, | "
                        "command) or give a file")


def _encode_to_stdout(codec, source, options) -> dict[str, Any]:
    """api.encode_file for `-o -`: the .ncb bytes, and nothing else, go to standard output."""
    from codec.base import Job

    encoded = codec.encode(codec.read(source, options), options, Job())
    data = encoded.writer.to_bytes()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return {"file": STDIO, "bytes": len(data), **{k: v for k, v in encoded.summary.items() if k != "bytes"}}


def _decode_command() -> click.Command:
    def run(bitstream_file, output, as_json, workers, ray_address, overwrite, **values):
        from bitstream.atomic import FRAMES, PNGS, check_output
        from bitstream.container import Reader
        from cli.options import given
        from codec import registry

        reader = Reader.from_path(bitstream_file)
        to_stdout = output == STDIO
        if output and not to_stdout:
            _check_output_writable(output)
        _positive("--workers", workers)
        codec = registry.get(reader.codec)
        if to_stdout and codec.kind != "video":
            raise UserError(f"-o - writes y4m video to standard output; a {reader.codec} file needs a file output")
        if to_stdout and workers is not None:
            raise UserError("--workers writes its segments to a file: drop it, or give a file output, not -o -")
        if to_stdout:
            _check_stdout_not_terminal()
        if output and not to_stdout:        # before any decoding: nothing that exists is touched without -y
            # images: a PNG folder unless .npy; features: a .json file; video: a folder or a file (io decides)
            directory = {"images": not output.lower().endswith(".npy"), "features": False}.get(codec.kind)
            check_output(output, overwrite, directory=directory, owned=PNGS if codec.kind == "images" else FRAMES)
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
        _report(summary, as_json, f"ncodec decode ({codec.name})", err=to_stdout)

    params = [click.Argument(["bitstream_file"])] + _decode_run_options() + _decode_codec_options()
    return click.Command("decode", callback=run, params=params,
                         help="Decode a .ncb file (the codec is read from the file). A .y4m output, or -o - "
                              "(y4m on standard output), gets the source's chroma subsampling when the file "
                              "records it: yuv420p as C420jpeg (what FFmpeg writes), or yuv422p; else yuv444p "
                              "(files written before ncodec recorded it, RGB sources, odd frame sizes). With -o - "
                              "the progress and the summary go to stderr.")


@cli.command()
@click.argument("bitstream_file")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Open a file whose network needs more memory than the 4G default cap, e.g. 8G.")
def info(bitstream_file, as_json, max_memory):
    """Show a .ncb file's codec, header and sections with their sizes."""
    from codec import api
    from codec.progress import print_table, to_json

    summary = api.info(bitstream_file, max_memory=max_memory)
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
@click.option("--bitstream", "bitstream_file", default=None,
              help="The .ncb file DECODED came from: its header gives the frames and the crop to compare (and, "
                   "for a pfnr library, each video's frames and bytes), its bytes the bpp. Any other file (an "
                   ".mp4 of a classical codec) gives the bpp from its size alone.")
@click.option("--video", type=int, default=None, metavar="K",
              help="pfnr library: DECODED is its video K; the bpp counts the bytes that video added (the "
                   "library's total is shown beside it).")
@click.option("--max-frames", "frames", type=int, default=None,
              help="Compare only the first N frames (default: the --bitstream file's frame count, else all).")
@click.option("--crop", default=None, metavar="HxW",
              help="Centre crop height x width applied to the reference (default: what the --bitstream file "
                   "records; an older file's size when the reference is larger).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def eval_(reference, decoded, bitstream_file, video, frames, crop, as_json):
    """PSNR (RGB, Y and YUV 6:1:1), MS-SSIM and bpp of DECODED against REFERENCE.

    Y and YUV PSNR come from the RGB frames through BT.601 full-range Y'CbCr (codec/video/metrics.psnr_yuv), with
    YUV = (6 Y + U + V) / 8 as video-coding papers report it."""
    from codec.video import metrics
    from codec.video.io import center_crop, parse_crop, read_video

    _positive("--max-frames", frames)
    _positive("--video", video)
    if video is not None and not bitstream_file:
        raise UserError("--video picks a video of a pfnr library: give the library with --bitstream")
    stored = _stored_video(bitstream_file, video) if bitstream_file else None
    frames = frames or (stored["frames"] if stored else None)
    ref = read_video(reference, frames=frames)
    size = (ref.height, ref.width)
    target, how = (parse_crop(crop), "--crop") if crop else _eval_crop(size, stored, bitstream_file)
    ref_frames = center_crop(ref.frames, target) if target and target != size else ref.frames
    dec = read_video(decoded, frames=frames)
    if frames is not None:
        for name, clip in (("reference", ref), ("decoded video", dec)):
            if clip.num_frames < frames:
                raise UserError(f"the {name} has {clip.num_frames} frames; "
                                + (f"the file holds {frames}" if stored else f"--max-frames asks for {frames}"))
    if ref_frames.shape != dec.frames.shape:
        raise UserError(f"shapes differ: reference {tuple(ref_frames.shape)} vs decoded {tuple(dec.frames.shape)} "
                        f"(frames, height, width, channels)")
    p_mean, _ = metrics.psnr(ref_frames, dec.frames)
    yuv = metrics.psnr_yuv(ref_frames, dec.frames)
    t, h, w = ref_frames.shape[:3]
    summary: dict[str, Any] = {"frames": t, "height": h, "width": w}
    if how:
        summary["crop"] = how
    summary.update({"psnr_rgb": float(p_mean), "psnr_y": yuv["psnr_y"], "psnr_yuv": yuv["psnr_yuv"],
                    "yuv": "BT.601 full range, from RGB; YUV = (6Y+U+V)/8",
                    "ms_ssim_rgb": float(metrics.ms_ssim(ref_frames, dec.frames))})
    if bitstream_file:
        if stored and "video" in stored:
            summary["video"] = stored["video"]
        summary["bytes"] = stored["bytes"] if stored else os.path.getsize(bitstream_file)
        summary["bpp"] = metrics.bpp(summary["bytes"], t, h, w)
        if stored and "library_bytes" in stored:
            summary["library_bytes"] = stored["library_bytes"]
            summary["library_bpp"] = metrics.bpp(stored["library_bytes"], stored["library_frames"], h, w)
    _report(summary, as_json, "ncodec eval")


def _stored_video(path: str, video: int | None) -> dict[str, Any] | None:
    """What a .ncb file holds of the video `eval` compares (VideoCodec.stored); None for any other file."""
    from bitstream.container import MAGIC, Reader
    from codec import registry

    with open(path, "rb") as f:
        ncb = f.read(len(MAGIC)) == MAGIC
    if not ncb:
        if video is not None:
            raise UserError(f"--video: {path} is not a .ncb file")
        return None
    reader = Reader.from_path(path)
    codec = registry.get(reader.codec)
    if codec.kind != "video":
        raise UserError(f"{path} is a {reader.codec} file of {codec.kind}: eval compares videos")
    return codec.stored(reader, video)


def _eval_crop(size: tuple[int, int], stored: dict[str, Any] | None, path: str | None
               ) -> tuple[tuple[int, int] | None, str | None]:
    """The centre crop that turns reference frames of `size` into what the file holds, and how it was chosen:
    none when the sizes match, the recorded source size's crop, or (files from before it was recorded) the
    file's size taken from the centre of a larger reference."""
    if stored is None:
        return None, None
    (H, W), target = size, (stored["height"], stored["width"])
    if size == target:
        return None, "none (the reference is the file's size)"
    source = stored["source_size"]
    text = f"{target[0]}x{target[1]}"
    if source is not None:
        if size != tuple(source):
            raise UserError(f"the reference is {H}x{W} but {path} was encoded from {source[0]}x{source[1]} frames "
                            f"cropped to {text} (height x width): is it the right reference?")
        return target, f"{text} centre (recorded in the file)"
    if H >= target[0] and W >= target[1]:
        return target, f"{text} centre (the file's size)"
    raise UserError(f"the reference's {H}x{W} frames are smaller than the file's {text} (height x width)")


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
@click.option("--json", "as_json", is_flag=True, help="Print the zoo's registry (recipes, sha256...) as JSON.")
def models(as_json):
    """List the zoo's trained models (any --model takes a name or a path; docs/ZOO.md has the recipes)."""
    from codec import zoo
    from codec.progress import to_json

    entries = zoo.models()
    if as_json:
        click.echo(to_json(entries))
        return
    rows = [(m["name"], zoo.size_text(m["bytes"]), m["data"], m["headline"]) for m in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])


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


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI, turns every user-caused failure into one line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    # SIGTERM (kill, timeout, a scheduler) takes Ctrl-C's path: temporaries removed, the fit's checkpoint saved
    handler = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm) if handler else None
    try:
        with warnings.catch_warnings():       # a warning is one line too, never a file:line and a source line
            warnings.showwarning = _show_warning
            warnings.simplefilter("always", UnverifiedOutputWarning)
            cli.main(args=args, prog_name="ncodec", standalone_mode=False, obj={"argv": args})
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort as e:            # click's form of KeyboardInterrupt (and of EOF at a prompt)
        resume = getattr(e.__cause__, "resume", None)
        interrupted = isinstance(e.__cause__, KeyboardInterrupt)
        click.echo(f"ncodec: {'interrupted' if interrupted else 'aborted'}"
                   + (f"; continue with: {resume}" if resume else ""), err=True)
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
    except KeyboardInterrupt as e:
        resume = getattr(e, "resume", None)
        click.echo("ncodec: interrupted" + (f"; continue with: {resume}" if resume else ""), err=True)
        return 130
    except Exception as e:  # a bug of ours: still one line, but say so and how to see more
        if debug:
            raise
        if _out_of_memory(e):               # the machine, not ncodec: the user can choose smaller settings
            click.echo(f"ncodec: error: out of memory ({_one_line(str(e))[:160]}); try a smaller --batch-size "
                       f"or --size", err=True)
            return EXIT_USAGE
        click.echo(f"ncodec: internal error (a bug in ncodec; please report it with the output of --debug): "
                   f"{type(e).__name__}: {_one_line(str(e))}", err=True)
        traceback.clear_frames(e.__traceback__)
        return 1
    finally:
        if handler:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"ncodec: warning: {_one_line(str(message))}", err=True)


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

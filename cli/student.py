"""`ncodec train teacher|student` and `ncodec split serve|send|demo`: the Entropic Student's commands.

Heavy imports (torch, compressai) happen inside the commands so that `ncodec --help` stays fast.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from codec.errors import UserError


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"--{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def _check_output(path: str, overwrite: bool) -> None:
    """Before any training: the folder exists, and an existing model file is replaced only with -y."""
    from bitstream.atomic import check_output

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"output folder {parent} does not exist")
    check_output(path, overwrite, directory=False)


def _report(summary: dict[str, Any], as_json: bool, title: str) -> None:
    from codec.progress import print_table, to_json

    if as_json:
        click.echo(to_json(summary))
    else:
        rows = [{"field": k, "value": v} for k, v in summary.items() if not isinstance(v, (list, dict))]
        print_table(rows, ["field", "value"], title=title)


_data_arg = click.argument("data", default="digits", required=False)
_common = [
    click.option("--limit", type=int, default=None, help="Train on at most N images (class-balanced)."),
    click.option("--batch-size", type=int, default=None, help="Mini-batch size."),
    click.option("--max-time", type=float, default=None, help="Seconds per training stage (ends after that epoch)."),
    click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--resume", is_flag=True, help="Continue from OUTPUT.ckpt, written after every epoch."),
    click.option("-y/-n", "--overwrite/--no-overwrite", default=False,
                 help="-y replaces an existing OUTPUT; -n, the default, refuses it."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.command("teacher")
@_data_arg
@click.option("-o", "--output", required=True, help="Teacher model file to write (.safetensors).")
@click.option("--arch", type=click.Choice(["digits", "resnet20", "resnet56"]), default=None,
              help="Architecture (default: digits for images of 16 px or less, else resnet20).")
@click.option("--epochs", type=int, default=None, help="Epochs (default 30).")
@click.option("--lr", type=float, default=0.1, show_default=True, help="SGD learning rate (cosine decay).")
@_with_common
def train_teacher(data, output, arch, epochs, lr, limit, batch_size, max_time, device, seed, resume, overwrite,
                  as_json):
    """Train a teacher classifier on DATA: 'digits' (default), a .tar.gz of class folders, or an image folder."""
    from codec.features.data import load_dataset
    from codec.features.train import Schedule, train_teacher as run

    for name, v in (("epochs", epochs), ("limit", limit), ("batch-size", batch_size), ("max-time", max_time),
                    ("lr", lr)):
        _positive(name, v)
    _check_output(output, overwrite)
    ds = load_dataset(data, limit=limit)
    schedule = Schedule(epochs=epochs or 30, batch_size=batch_size or 128, lr=lr, max_time=max_time)
    summary = run(ds, output, arch=arch, schedule=schedule, device=device, seed=seed, resume=resume)
    _report(summary, as_json, "ncodec train teacher")


@click.command("student")
@_data_arg
@click.option("--teacher", "teacher_path", required=True,
              help="Teacher: a file from `ncodec train teacher`, a zoo name (`ncodec models`, e.g. digits-teacher), "
                   "or pretrained CIFAR ResNet weights (.th).")
@click.option("--beta", type=float, default=1.0, show_default=True,
              help="Rate weight: larger -> fewer bytes per image, lower accuracy.")
@click.option("-o", "--output", required=True, help="Student model file to write (.safetensors).")
@click.option("--epochs", type=int, default=None, help="Stage-1 epochs (distillation + rate).")
@click.option("--epochs2", type=int, default=None,
              help="Stage-2 epochs (fine-tuning decoder and tail); 0 writes the stage-1 student.")
@click.option("--lr", type=float, default=None, help="Stage-1 Adam learning rate.")
@click.option("--lr2", type=float, default=None, help="Stage-2 SGD learning rate.")
@click.option("--split", type=click.Choice(["layer1", "layer2"]), default=None,
              help="The teacher stages up to and including this one are replaced by the bottleneck [layer1].")
@click.option("--latent-channels", type=int, default=None, help="Channels of the coded latent.")
@click.option("--encoder-channels", type=int, default=None, help="Width of the device-side encoder.")
@click.option("--encoder-blocks", type=int, default=None,
              help="Residual blocks in the encoder at the latent's resolution [0].")
@click.option("--encoder-kernel", type=int, default=None,
              help="Kernel of the encoder's down-sampling convolutions: 3, 5 or 7 [5].")
@click.option("--decoder-channels", type=int, default=None, help="Width of the server-side decoder.")
@click.option("--decoder-blocks", type=int, default=None,
              help="Residual blocks in the server-side decoder at the latent's resolution [0].")
@click.option("--encoder-stride", type=int, default=None, help="Latent size = image size / stride (1-16).")
@click.option("--distill", default="all", show_default=True,    # checked by train_student, with its choices
              help="Stage 1 matches every teacher stage from the split on (all, the paper), only the split "
                   "feature (head: ~3x cheaper), or none (the KD loss alone; needs --kd-weight).")
@click.option("--kd-weight", type=float, default=0.0, show_default=True,
              help="Add this weight x the KD loss on the logits to stage 1 (not in the paper: spends the bits on "
                   "what the classifier needs; ~1e4 for CIFAR-10).")
@click.option("--hard-latent", is_flag=True,
              help="Stage 1 decodes the rounded latent (straight-through) instead of the noisy one.")
@click.option("--tune-tail", is_flag=True,
              help="Stage 1 trains the tail too (at a tenth of the learning rate), not only stage 2.")
@click.option("--init", default=None,
              help="Start stage 1 from this student file's encoder, prior and decoder (its architecture).")
@click.option("--from", "start", default=None,
              help="Run stage 2 only, from this student file (its encoder, prior and tables stay bit-identical).")
@click.option("--mix", default="none", show_default=True,   # checked by Stage2Loss.check, with its choices
              help="Stage 2 mixes pairs of training images: none, mixup or cutmix (the teacher labels each mixed "
                   "image).")
@click.option("--kd-alpha", type=float, default=0.5, show_default=True,
              help="Stage-2 weight of the KL to the teacher; the rest is cross-entropy on the labels (1: none).")
@click.option("--kd-temperature", type=float, default=1.0, show_default=True,
              help="Stage-2 KD temperature: both logits are divided by it (the KL is scaled back by its square).")
@_with_common
def train_student(data, teacher_path, beta, output, epochs, epochs2, lr, lr2, split, latent_channels,
                  encoder_channels, encoder_blocks, encoder_kernel, decoder_channels, decoder_blocks, encoder_stride, distill,
                  kd_weight, hard_latent, tune_tail, init, start, mix, kd_alpha, kd_temperature, limit, batch_size,
                  max_time, device, seed, resume, overwrite, as_json):
    """Train an Entropic Student from a teacher on DATA (both stages) and write its model file."""
    from dataclasses import replace

    from codec.features.data import load_dataset
    from codec.features.student import ENCODER_KERNELS
    from codec.features.train import (Stage2Loss, default_schedules, default_student_options, finetune_student,
                                      load_teacher_for_training, train_student as run)

    for name, v in (("epochs", epochs), ("lr", lr), ("lr2", lr2), ("limit", limit),
                    ("batch-size", batch_size), ("max-time", max_time), ("latent-channels", latent_channels),
                    ("encoder-channels", encoder_channels), ("decoder-channels", decoder_channels)):
        _positive(name, v)
    _positive("beta", beta, allow_zero=True)
    _positive("epochs2", epochs2, allow_zero=True)      # 0: the stage-1 student, for --from to continue
    _positive("kd-weight", kd_weight, allow_zero=True)
    _positive("encoder-blocks", encoder_blocks, allow_zero=True)
    _positive("decoder-blocks", decoder_blocks, allow_zero=True)
    if encoder_kernel is not None and encoder_kernel not in ENCODER_KERNELS:   # the option's name, not the config's
        raise UserError(f"--encoder-kernel {encoder_kernel}: expected one of {ENCODER_KERNELS}")
    loss2 = Stage2Loss(kd_alpha=kd_alpha, mix=mix, kd_temperature=kd_temperature)
    loss2.check()
    if epochs2 == 0 and loss2 != Stage2Loss():
        raise UserError("--mix, --kd-alpha and --kd-temperature shape stage 2, which --epochs2 0 skips")
    _check_output(output, overwrite)
    teacher = load_teacher_for_training(teacher_path)
    ds = load_dataset(data, limit=limit, channels=int(teacher.config["in_channels"]))
    size = int(teacher.config["image_size"])
    s1, s2 = default_schedules(size)
    s1 = replace(s1, epochs=epochs or s1.epochs, lr=lr or s1.lr, batch_size=batch_size or s1.batch_size,
                 max_time=max_time)
    s2 = replace(s2, epochs=epochs2 if epochs2 is not None else s2.epochs, lr=lr2 or s2.lr,
                 batch_size=batch_size or s2.batch_size, max_time=max_time)
    architecture = {"split": split, "latent_channels": latent_channels, "encoder_channels": encoder_channels,
                    "encoder_blocks": encoder_blocks, "encoder_kernel": encoder_kernel,
                    "decoder_channels": decoder_channels, "decoder_blocks": decoder_blocks,
                    "encoder_stride": encoder_stride}
    if start is not None:
        stage1_only = [f"--{n.replace('_', '-')}" for n, v in (("epochs", epochs), ("lr", lr), *architecture.items(),
                                                                ("kd_weight", kd_weight or None),
                                                                ("hard_latent", hard_latent or None),
                                                                ("tune_tail", tune_tail or None),
                                                                ("init", init)) if v is not None]
        if stage1_only:
            raise UserError(f"--from runs stage 2 only: {', '.join(stage1_only)} would not apply")
        if not os.path.isfile(start):
            raise UserError(f"--from {start}: no such student file")
        summary = finetune_student(ds, teacher, start, output, stage2=s2, device=device, seed=seed, resume=resume,
                                   teacher_source=teacher_path, loss2=loss2)
        _report(summary, as_json, "ncodec train student (stage 2)")
        return
    given = {k: v for k, v in architecture.items() if v is not None}
    if init is not None and not os.path.isfile(init):
        raise UserError(f"--init {init}: no such student file")
    # with --init the architecture is the file's: train_student refuses any option given beside it
    options = given if init is not None else {**default_student_options(size), **given}
    summary = run(ds, teacher, output, beta=beta, stage1=s1, stage2=s2, student_options=options, device=device,
                  seed=seed, resume=resume, teacher_source=teacher_path, distill=distill, kd_weight=kd_weight,
                  hard_latent=hard_latent, tune_tail=tune_tail, init=init, loss2=loss2)
    _report(summary, as_json, "ncodec train student")


# ---------------------------------------------------------------------------------------------------------------
# split computing


@click.group("split")
def split():
    """Split computing: the device encodes, the server decodes and classifies, over TCP."""


@split.command("serve")
@click.option("--model", required=True, help="Student: a model file or a zoo name (`ncodec models`).")
@click.option("--port", type=int, required=True, help="TCP port (0: any free port, printed).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--device", default="auto", show_default=True, help="Device for the decoder and tail.")
@click.option("--max-frame", type=int, default=1 << 20, show_default=True, help="Largest frame accepted (bytes).")
@click.option("--frame-timeout", "--timeout", "frame_timeout", type=float, default=30.0, show_default=True,
              help="Seconds within which each frame must arrive complete, counted from when the server is ready "
                   "for it (after connecting, after each reply): a client that trickles or idles longer is "
                   "dropped. --timeout is the old name.")
@click.option("--max-clients", type=int, default=64, show_default=True,
              help="Connections served at once; one more gets a 'server busy' refusal and is closed.")
@click.option("--child", is_flag=True, hidden=True,
              help="Print 'ncsplit-ready HOST PORT MODEL_ID' on stdout once listening, and stop when stdin closes "
                   "(how `split demo` runs its server process).")
def serve(model, port, host, device, max_frame, frame_timeout, max_clients, child):
    """Run the server half: entropy decoding, the student's decoder and tail (Ctrl-C stops).

    Logs one line per connection on stderr: peer, images, bytes in and out, seconds, how it ended."""
    from codec.features.codec import open_student
    from codec.features.split import SplitServer, serve_until_stdin_closes

    _check_port(port)
    _positive("max-frame", max_frame)
    _positive("frame-timeout", frame_timeout)
    _positive("max-clients", max_clients)
    student, model_id, dev = open_student(model, device)
    server = SplitServer(student, model_id, dev, host=host, port=port, max_frame=max_frame,
                         frame_timeout=frame_timeout, max_clients=max_clients,
                         log=lambda msg: click.echo(f"ncodec split serve: {msg}", err=True))
    click.echo(f"ncodec split serve: student {model_id} ({'x'.join(map(str, student.latent_shape))} latent) "
               f"on {server.host}:{server.port} ({dev}), up to {max_clients} clients, {frame_timeout:g} s per "
               f"frame; Ctrl-C stops", err=True)
    try:
        if child:
            serve_until_stdin_closes(server, model_id)
        else:
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        st = server.stats
        click.echo(f"ncodec split serve: served {st.images} images on {st.connections} connections, "
                   f"{st.errors} dropped for an error, {st.refused} refused (server busy)", err=True)


@split.command("send")
@click.argument("images", nargs=-1, required=True)
@click.option("--model", required=True,
              help="Student: a model file or a zoo name (`ncodec models`), the same as the server's.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, required=True)
@click.option("--device", default="auto", show_default=True, help="Device for the encoder.")
@click.option("--limit", type=int, default=None, help="Send at most N images, taken round-robin over the folders.")
@click.option("--every", type=int, default=None, help="Print a table row every N images (default: ~20 rows).")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON (no live table).")
def send(images, model, host, port, device, limit, every, as_json):
    """Run the device half on IMAGES: encode, send each latent, print the server's classes.

    IMAGES are image files, folders of class subfolders (FOLDER/<class>/<image>) or .tar.gz archives of them;
    accuracy is scored for images in folders named after the model's classes."""
    from codec.features.codec import open_student
    from codec.features.split import SplitClient, run_session

    _check_port(port, allow_zero=False)
    _positive("every", every)
    _positive("limit", limit)
    student, model_id, dev = open_student(model, device)
    found, pixels, labels = _read_for(student, list(images), limit)
    with SplitClient(student, model_id, dev, host, port) as client:
        session = run_session(client, pixels, labels, live=not as_json, every=every)
    summary = {"server": f"{host}:{port}", "model_id": model_id, **_session_summary(session, found)}
    _report_session(summary, as_json, "ncodec split send")


@split.command("demo")
@click.option("--model", default=None,
              help="Student: a model file or a zoo name (`ncodec models`) [digits-student, or the one --retrain or "
                   "--beta trains].")
@click.option("--images", default=None, metavar="PATH|N",
              help="Images to send: a folder of class subfolders (PATH/<class>/<image>) or a .tar.gz of one; or a "
                   "number N (when no such path exists): that many held-out digits [60 digits].")
@click.option("--limit", type=int, default=None,
              help="Send at most N of the --images PATH, taken round-robin over the folders.")
@click.option("--out", "out_dir", default="out/split_demo", show_default=True,
              help="Folder for the digits demo's images (and the teacher/student that --retrain or --beta trains).")
@click.option("--beta", type=float, default=None,
              help="Train (once, cached in --out) a digits teacher and a student of this rate weight instead of "
                   "using the zoo's digits-teacher and digits-student (beta 0.5).")
@click.option("--port", type=int, default=0, show_default=True, help="Server port (0: any free port).")
@click.option("--device", default="auto", show_default=True)
@click.option("--retrain", is_flag=True,
              help="Train the teacher and student in --out again (beta 0.5 unless --beta) instead of the zoo's.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON (no live table).")
def demo(model, images, limit, out_dir, beta, port, device, retrain, as_json):
    """Start a split server process on 127.0.0.1 and send it images from this one: by default held-out digits to
    the zoo's digits student.

    Prints accuracy (when the images sit in folders named after the model's classes), bytes per image and the
    latency percentiles of the device's encoder, the network and the server."""
    _positive("limit", limit)
    _check_port(port)
    if model is not None and (retrain or beta is not None):
        raise UserError("--model names the student; --retrain and --beta train one: give one or the other")
    count, path = _demo_images(images)
    if limit is not None and path is None:
        raise UserError("--limit applies to --images PATH; for the digits, --images N is the count")
    from codec.device import pick_device
    from codec.features.train import thread_limit

    with thread_limit(pick_device(device), 8):      # digits: tiny per-image work, one thread is fastest
        summary = run_demo(out_dir, count, beta, port, device, retrain, as_json, model=model, path=path,
                           limit=limit)
    _report_session(summary, as_json, "ncodec split demo")


def _demo_images(images: str | None) -> tuple[int, str | None]:
    """--images: a path that exists, else a count of held-out digits (the option's first meaning)."""
    if images is None:
        return 60, None
    if os.path.exists(images):
        return 0, images
    if images.isdigit():
        count = int(images)
        _positive("images", count)
        return count, None
    raise UserError(f"--images {images}: no such file or folder (give a folder of class subfolders, a .tar.gz of "
                    f"one, or a number of held-out digits)")


def _check_port(port: int, allow_zero: bool = True) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise UserError(f"--port must be in {'0' if allow_zero else '1'}..65535, got {port}")


def _read_for(student, inputs: list[str], limit: int | None = None):
    """The images as the student takes them (codec/features/collection.py): collection, pixels, true labels."""
    from codec.features.collection import read_collection

    found = read_collection(inputs)
    if limit is not None:
        found = found.balanced(limit)
    c, h, w = student.image_shape
    return found, found.pixels(c, (h, w)), found.labels(student.classes)


def _session_summary(session, found=None) -> dict[str, Any]:
    row = session.row()
    summary = {"images": row["sent"], "labelled": session.labelled, "accuracy": row["accuracy"],
               "bytes_per_image": row["bytes/image"], "wire_bytes_per_image": row["wire bytes/image"]}
    if found is not None:
        summary["file_bytes_per_image"] = found.file_bytes() / len(found)
    summary.update({"encode_ms": row["encode ms"], "round_trip_ms": row["round trip ms"],
                    "server_ms": row["server ms"], "latency_ms": session.latency()})
    return summary


def _report_session(summary: dict[str, Any], as_json: bool, title: str) -> None:
    """The summary's fields, then the latency percentiles as a table of their own."""
    from codec.features.split import latency_rows
    from codec.progress import print_table

    if as_json:
        _report(summary, as_json, title)
        return
    shown = dict(summary)
    if shown.get("accuracy") is None:
        shown["accuracy"] = "unknown (no image sits in a folder named after one of the model's classes)"
    elif shown["labelled"] < shown["images"]:
        shown["accuracy_of"] = (f"the {shown['labelled']} images in folders named after a class; "
                                f"{shown['images'] - shown['labelled']} others not scored")
    _report(shown, False, title)
    print_table(latency_rows(summary["latency_ms"]), ["ms per image", "p50", "p90", "p99", "mean"],
                title="latency (ms per image)")


def run_demo(out_dir: str, count: int, beta: float | None, port: int, device: str, retrain: bool,
             as_json: bool, model: str | None = None, path: str | None = None,
             limit: int | None = None) -> dict[str, Any]:
    """Everything `ncodec split demo` does; the server runs in a child process (`_server_command`), the client here.

    `path`: the images to send (a folder or an archive, codec/features/collection.py); None: `count` held-out
    digits, written as PNG files into out_dir/images/<class>/."""
    import torch

    from codec.device import pick_device
    from codec.features.codec import open_student
    from codec.features.split import ServerProcess, SplitClient, run_session

    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    teacher = None
    if model is not None:
        student_path = model
    else:
        teacher, student_path = _demo_models(out_dir, beta, device, retrain, say)

    # the device half's load here, the server's in its own process: a bad model or bad images are one line before
    # any process starts
    client_student, model_id, dev = open_student(student_path, device)
    extra: dict[str, Any] = {}
    if path is not None:
        found, pixels, labels = _read_for(client_student, [path], limit)
        what = f"{len(found)} images of {path}"
    else:
        held, files = _held_out_digits(out_dir, count)
        found, pixels, labels = _read_for(client_student, files)
        what = f"{len(found)} held-out digits"
        if teacher is not None:
            extra["teacher_accuracy"] = _teacher_accuracy(teacher, held, device)
        extra["png_bytes_per_image"] = found.file_bytes() / len(found)
    # the server's CPU threads: the client's own budget (thread_limit in `demo`), not every core
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    with ServerProcess(_server_command(student_path, port, device), env=env) as server:
        say(f"server: student {server.model_id} on {server.host}:{server.port} (process {server.proc.pid}); "
            f"sending {what}")
        with SplitClient(client_student, model_id, dev, server.host, server.port) as client:
            session = run_session(client, pixels, labels, live=not as_json and path is None, bar=path is not None)
    c, h, w = client_student.image_shape
    summary = {"server": f"{server.host}:{server.port}", "model_id": model_id, "student": student_path}
    if path is not None:
        summary["images_from"] = path
    return {**summary, **_session_summary(session, found), **extra, "raw_bytes_per_image": c * h * w,
            "device": str(pick_device(device))}


# runs cli.main from the folder this process imported it from: the current folder, which Python puts first on the
# path, may hold another package named `cli`
_CHILD_CODE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from cli.main import main; sys.exit(main())"


def _server_command(model: str, port: int, device: str) -> list[str]:
    """The demo's server process: `ncodec split serve --child` on 127.0.0.1, with this interpreter and source."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, "-c", _CHILD_CODE, root, "split", "serve", "--model", model, "--port", str(port),
            "--host", "127.0.0.1", "--device", device, "--child"]


def _demo_models(out_dir: str, beta: float | None, device: str, retrain: bool, say):
    """The digits teacher and the student's path: the zoo's, or trained (and cached) in out_dir."""
    from codec.features import model_file
    from codec.features.data import load_dataset
    from codec.features.train import Schedule, default_schedules, default_student_options, train_student, \
        train_teacher

    trained = retrain or beta is not None
    if trained:
        beta = 0.5 if beta is None else beta
        os.makedirs(out_dir, exist_ok=True)
        teacher_path = os.path.join(out_dir, "teacher.safetensors")
        student_path = os.path.join(out_dir, f"student_beta{beta:g}.safetensors")
    else:       # the zoo's models (codec/zoo, `ncodec models`): trained on the other 90% of the digits
        teacher_path, student_path = "digits-teacher", "digits-student"
    ds = load_dataset("digits") if trained else None
    if trained and (retrain or not _loads(model_file.load_teacher, teacher_path)):
        say(f"training a digits teacher -> {teacher_path}")
        train_teacher(ds, teacher_path, arch="digits", schedule=Schedule(epochs=10, batch_size=128, lr=0.1),
                      device=device)
    teacher = model_file.load_teacher(teacher_path).eval()
    if trained and (retrain or not _loads(model_file.load_student, student_path)):
        say(f"training a digits student (beta {beta:g}) -> {student_path}")
        s1, s2 = default_schedules(8)
        train_student(ds, teacher, student_path, beta=beta, stage1=s1, stage2=s2,
                      student_options=default_student_options(8), device=device, teacher_source=teacher_path)
    return teacher, student_path


def _held_out_digits(out_dir: str, count: int):
    """The first `count` held-out digits as optimised PNG files in out_dir/images/<class>/, so that the client
    reads real files and knows the labels from their folders."""
    import io

    import numpy as np
    from PIL import Image

    from codec.features.data import load_dataset, split_holdout
    from codec.features.train import HOLDOUT

    _, held = split_holdout(load_dataset("digits"), HOLDOUT, seed=0)
    held = held.subset(np.arange(min(count, len(held))))
    paths = []
    for i in range(len(held)):
        folder = os.path.join(out_dir, "images", held.classes[int(held.labels[i])])
        os.makedirs(folder, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(held.images[i, 0].numpy()).save(buf, format="PNG", optimize=True)
        path = os.path.join(folder, f"{i:04d}.png")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        paths.append(path)
    return held, paths


def _teacher_accuracy(teacher, held, device: str) -> float:
    from codec.device import pick_device
    from codec.features.train import accuracy

    dev = pick_device(device)
    return accuracy(teacher.to(dev), held, dev)


def _loads(loader, path: str) -> bool:
    """A cached model file is reused only if it loads; anything else is retrained."""
    if not os.path.exists(path):
        return False
    try:
        loader(path)
        return True
    except UserError:
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(split())

"""Image collections for split computing and the student codec (codec/features/collection.py): `split demo
--images`, `split send` and `encode --codec student` over a folder of class subfolders and a .tar.gz of one,
predictions that carry relative paths, stored names checked when decoding, and one-line errors for bad input.

Uses the zoo's digits-student (loads in a moment, nothing is trained)."""
import io
import json
import os
import socket
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from bitstream.container import Reader, Writer
from bitstream.serial import ByteWriter
from codec.device import cpu_thread_limit
from codec.errors import UserError
from codec.features import collection as C
from codec.features import model_file
from codec.features import train as T
from codec.features.data import load_dataset, split_holdout
from codec.features import split as S
from codec.features.split import SplitServer
from tests.cli_helpers import assert_one_line_error, run

CPU = torch.device("cpu")
STUDENT = "digits-student"
COUNT = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with cpu_thread_limit(CPU, limit=1):
        yield


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Twelve held-out digits as PNGs in DIGITS/<class>/, the same folder as a .tar.gz (top folder 'digits'), and
    the relative names in the order every reader lists them."""
    _, held = split_holdout(load_dataset("digits"), T.HOLDOUT, seed=0)
    root = tmp_path_factory.mktemp("set")
    folder = root / "digits"
    names = []
    for i in range(COUNT):
        cls = held.classes[int(held.labels[i])]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(held.images[i, 0].numpy()).save(folder / cls / f"{i:04d}.png")
        names.append(f"{cls}/{i:04d}.png")
    archive = root / "digits.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="digits")
    return folder, archive, sorted(names)


def test_demo_over_a_folder_and_a_tar_gives_accuracy_bytes_and_latency(capsys, digits):
    folder, archive, _ = digits
    results = []
    for source in (folder, archive):
        code, out, err = run(capsys, "split", "demo", "--model", STUDENT, "--images", source, "--device", "cpu",
                             "--json")
        assert code == 0, err
        s = json.loads(out)
        assert s["images"] == s["labelled"] == COUNT and s["images_from"] == str(source)
        assert s["accuracy"] >= 0.75 and 10 < s["bytes_per_image"] < 40
        assert s["wire_bytes_per_image"] == pytest.approx(s["bytes_per_image"] + 5) and s["file_bytes_per_image"] > 0
        for part in ("encoder", "send_to_reply", "server", "network"):
            p = s["latency_ms"][part]
            assert 0 <= p["p50"] <= p["p90"] <= p["p99"], (part, p)
        results.append((s["accuracy"], s["bytes_per_image"]))
    assert results[0] == results[1]                      # the same images, read from either
    code, out, err = run(capsys, "split", "demo", "--model", STUDENT, "--images", archive, "--device", "cpu")
    assert code == 0, err
    assert "accuracy" in out and "latency (ms per image)" in out
    for row in ("encoder", "send to reply", "server (decode + classify)", "network"):
        assert row in out
    assert "p50" in out and "p90" in out and "p99" in out


def test_demo_limit_takes_every_class_and_folders_not_named_after_classes_leave_accuracy_unknown(capsys, digits,
                                                                                                tmp_path):
    folder, _, names = digits
    code, out, err = run(capsys, "split", "demo", "--images", folder, "--limit", "4", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == 4
    pets = tmp_path / "pets"
    for i, name in enumerate(names[:4]):
        (pets / ("cat", "dog")[i % 2]).mkdir(parents=True, exist_ok=True)
        (pets / ("cat", "dog")[i % 2] / f"{i}.png").write_bytes((folder / name).read_bytes())
    code, out, err = run(capsys, "split", "demo", "--images", pets, "--device", "cpu")
    assert code == 0, err
    assert "unknown (no image sits in a folder named after one of the model's classes)" in out
    code, out, err = run(capsys, "split", "demo", "--images", pets, "--device", "cpu", "--json")
    s = json.loads(out)
    assert s["images"] == 4 and s["labelled"] == 0 and s["accuracy"] is None


@pytest.fixture
def children(monkeypatch):
    """Every server process the demo starts, kept to check afterwards."""
    started = []

    class Recording(S.ServerProcess):
        def start(self):
            started.append(self)
            super().start()

    monkeypatch.setattr(S, "ServerProcess", Recording)
    return started


def test_demo_serves_from_a_child_process_that_is_reaped_after_success_error_and_ctrl_c(capsys, digits, children,
                                                                                         monkeypatch):
    folder, _, _ = digits
    args = ["split", "demo", "--model", STUDENT, "--images", folder, "--limit", "3", "--device", "cpu", "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    (child,) = children
    assert child.proc.pid != os.getpid() and child.proc.returncode == 0        # stopped by closing its stdin
    s = json.loads(out)
    assert s["server"] == f"127.0.0.1:{child.port}" and s["images"] == 3 and s["latency_ms"]["server"]["p50"] > 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "run_session", interrupted)
    code, _, err = run(capsys, *args)
    assert code == 130 and err.strip() == "ncodec: interrupted", err
    assert len(children) == 2 and children[1].proc.returncode == 0


def test_closing_the_childs_stdin_stops_it():
    """What happens when the demo dies without cleaning up (SIGKILL): the kernel closes the pipe."""
    from cli.student import _server_command

    with S.ServerProcess(_server_command(STUDENT, 0, "cpu")) as server:
        student, model_id = model_file.load_student(STUDENT)
        assert server.model_id == model_id
        with S.SplitClient(student, model_id, CPU, server.host, server.port) as c:
            c.classify(torch.zeros(1, 8, 8, dtype=torch.uint8))
        server.proc.stdin.close()
        assert server.proc.wait(timeout=60) == 0


def test_demo_on_a_port_in_use_is_one_line(capsys, digits, children):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        code, _, err = run(capsys, "split", "demo", "--images", digits[0], "--port", holder.getsockname()[1],
                           "--device", "cpu")
    finally:
        holder.close()
    assert_one_line_error(code, err, "the split server did not start: port")
    assert "already in use" in err and children[0].proc.returncode == 2


@pytest.mark.parametrize("script, code, fragment", [
    # the user's or the machine's doing: exit 2
    ("import sys; print('ncodec: error: no such device', file=sys.stderr); sys.exit(2)", 2,
     "ncodec: error: the split server did not start: no such device"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 2,
     "ncodec: error: the split server process was killed by signal 9 before it listened"),
    ("import time; print('hello'); time.sleep(60)", 2,
     "ncodec: error: the split server process did not start within 1 s"),
    # a crash: exit 1, as an internal error
    ("import sys; sys.exit(3)", 1, "ServerStartError: the split server process exited with code 3 before it listened"),
    ("import sys; print('ncodec: internal error (a bug): X', file=sys.stderr); sys.exit(1)", 1,
     "exited with code 1 before it listened (internal error (a bug): X)"),
])
def test_a_server_process_that_does_not_start_is_one_line(capsys, digits, children, monkeypatch, script, code,
                                                          fragment):
    import cli.student

    monkeypatch.setattr(cli.student, "_server_command", lambda *a: [sys.executable, "-c", script])
    monkeypatch.setattr(S, "DEFAULT_START_TIMEOUT", 1.0)
    monkeypatch.setattr(S, "STOP_GRACE", 1.0)                  # the sleeper ignores its stdin: SIGTERM ends it
    got, out, err = run(capsys, "split", "demo", "--images", digits[0], "--device", "cpu", "--json")
    lines = err.strip().splitlines()
    assert got == code and out == "" and len(lines) == 1 and lines[0].startswith("ncodec: "), err
    assert fragment in lines[0], lines[0]
    assert children[0].proc.returncode is not None                # reaped


def test_send_takes_a_folder_and_a_tar(capsys, digits):
    folder, archive, _ = digits
    student, model_id = model_file.load_student(STUDENT)
    with SplitServer(student, model_id, CPU, port=0, frame_timeout=10.0) as srv:
        got = []
        for source in (folder, archive):
            code, out, err = run(capsys, "split", "send", source, "--model", STUDENT, "--port", srv.port,
                                 "--device", "cpu", "--json")
            assert code == 0, err
            s = json.loads(out)
            assert s["images"] == s["labelled"] == COUNT and set(s["latency_ms"]) >= {"encoder", "server"}
            got.append((s["accuracy"], s["bytes_per_image"]))
        code, out, err = run(capsys, "split", "send", folder, "--model", STUDENT, "--port", srv.port,
                             "--device", "cpu")
        assert code == 0, err
        assert "latency (ms per image)" in out
    assert got[0] == got[1]


def test_encode_reads_folders_and_tars_and_decode_writes_relative_paths(capsys, digits, tmp_path):
    folder, archive, names = digits
    predictions = {}
    for key, source in (("folder", folder), ("tar", archive)):
        out = tmp_path / f"{key}.ncb"
        code, _, err = run(capsys, "encode", source, "-o", out, "--codec", "student", "--model", STUDENT,
                           "--device", "cpu")
        assert code == 0, err
        code, _, err = run(capsys, "decode", out, "-o", tmp_path / f"{key}.json", "--model", STUDENT,
                           "--device", "cpu")
        assert code == 0, err
        predictions[key] = json.loads((tmp_path / f"{key}.json").read_text())["predictions"]
    assert [p["image"] for p in predictions["folder"]] == names                 # relative to the folder given
    assert [p["image"] for p in predictions["tar"]] == [f"digits/{n}" for n in names]   # the archive's paths
    assert [p["class"] for p in predictions["folder"]] == [p["class"] for p in predictions["tar"]]
    # a file given by name keeps its base name, as before
    code, _, err = run(capsys, "encode", folder / names[0], "-o", tmp_path / "one.ncb", "--codec", "student",
                       "--model", STUDENT, "--device", "cpu")
    assert code == 0, err
    code, out, err = run(capsys, "decode", tmp_path / "one.ncb", "--model", STUDENT, "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["image"] == os.path.basename(names[0])


@pytest.mark.parametrize("name, problem", [("../etc/passwd", "'..'"), ("/etc/passwd", "absolute"),
                                           ("a//b.png", "empty"), ("a\nb.png", "control"),
                                           ("x" * 1025, "longer than 1024")])
def test_stored_names_are_untrusted_when_decoding(capsys, digits, tmp_path, name, problem):
    folder, _, names = digits
    good = tmp_path / "good.ncb"
    assert run(capsys, "encode", folder / names[0], "-o", good, "--codec", "student", "--model", STUDENT,
               "--device", "cpu")[0] == 0
    reader = Reader.from_path(good)
    w = Writer(reader.codec, reader.codec_version, dict(reader.header))
    w.add_section("latents", reader.payload("latents"))
    stored = ByteWriter()
    stored.str_(name)
    w.add_section("names", stored.getvalue(), required=False)
    w.write(tmp_path / "bad.ncb")
    code, _, err = run(capsys, "decode", tmp_path / "bad.ncb", "--model", STUDENT, "--device", "cpu")
    assert_one_line_error(code, err, "section 'names'")
    assert problem in err or (problem == "longer than 1024" and "exceeds the limit" in err)


def _bad_inputs(tmp, digits_folder):
    """name -> (path, what the one-line error says)."""
    (tmp / "empty").mkdir()
    (tmp / "notimg" / "3").mkdir(parents=True)
    (tmp / "notimg" / "3" / "a.png").write_text("not an image")
    (tmp / "big" / "3").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp / "big" / "3" / "a.png")
    good = tmp / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(digits_folder, arcname="digits")
    (tmp / "truncated.tar.gz").write_bytes(good.read_bytes()[:200])
    (tmp / "garbage.tar.gz").write_bytes(b"this is no archive")
    with tarfile.open(tmp / "escape.tar.gz", "w:gz") as tar:
        data = next(digits_folder.glob("*/*.png")).read_bytes()
        info = tarfile.TarInfo("../outside/3/a.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with tarfile.open(tmp / "links.tar", "w") as tar:
        info = tarfile.TarInfo("set/3/a.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    return {"missing": (tmp / "nothing", "not found"), "empty": (tmp / "empty", "no image files"),
            "not an image": (tmp / "notimg", "cannot read image"), "wrong size": (tmp / "big", "the model takes 8x8"),
            "truncated tar": (tmp / "truncated.tar.gz", "tar archive"),
            "garbage tar": (tmp / "garbage.tar.gz", "not a tar archive"),
            "escaping member": (tmp / "escape.tar.gz", "unsafe member name"),
            "only links": (tmp / "links.tar", "no image files")}


BAD = ["missing", "empty", "not an image", "wrong size", "truncated tar", "garbage tar", "escaping member",
       "only links"]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, digits):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), digits[0])


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("command", ["demo", "send", "encode"])
def test_bad_inputs_are_one_line_errors(capsys, bad_inputs, tmp_path, case, command):
    path, fragment = bad_inputs[case]
    if command == "demo":
        args = ["split", "demo", "--images", path, "--device", "cpu"]
        if case == "missing":
            fragment = "no such file or folder"
    elif command == "send":                # the inputs are read before connecting: no server needed
        args = ["split", "send", path, "--model", STUDENT, "--port", "9", "--device", "cpu"]
    else:
        args = ["encode", path, "-o", tmp_path / "o.ncb", "--codec", "student", "--model", STUDENT, "--device", "cpu"]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o.ncb").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--images", "0"], "--images must be positive"),
    (["--limit", "3"], "--limit applies to --images PATH"),
    (["--model", STUDENT, "--retrain"], "give one or the other"),
])
def test_impossible_demo_options_are_one_line_errors(capsys, args, fragment):
    code, _, err = run(capsys, "split", "demo", *args, "--device", "cpu")
    assert_one_line_error(code, err, fragment)


def test_the_collection_reader(digits, tmp_path, monkeypatch):
    folder, archive, names = digits
    from_folder, from_tar = C.read_collection(folder), C.read_collection(str(archive))
    assert from_folder.names == names and from_tar.names == [f"digits/{n}" for n in names]
    assert from_folder.labels([str(i) for i in range(10)]) == [int(n.split("/")[0]) for n in names]
    assert torch.equal(from_folder.pixels(1, (8, 8)), from_tar.pixels(1, (8, 8)))
    # a file given by name: its base name, and its folder as its class
    one = C.read_collection([str(folder / names[0])])
    assert one.names == [os.path.basename(names[0])] and one.items[0].folder == names[0].split("/")[0]
    # round-robin over folders, in the original order
    picked = from_folder.balanced(5)
    assert len(picked) == 5 and len({it.folder for it in picked.items}) == min(5, len({n[0] for n in names}))
    assert picked.names == sorted(picked.names)
    # bounds on archives
    monkeypatch.setattr(C, "MAX_MEMBER_BYTES", 10)
    with pytest.raises(UserError, match="at most"):
        C.read_collection(str(archive))
    monkeypatch.undo()
    monkeypatch.setattr(C, "MAX_ENTRIES", 3)
    with pytest.raises(UserError, match="archive entries"):
        C.read_collection(str(archive))


@pytest.mark.parametrize("name, ok", [("cat/0001.png", True), ("digit_1700.png", True), ("a/b/c.jpg", True),
                                      ("", False), ("../x.png", False), ("a/../x.png", False), ("/x.png", False),
                                      ("a\\x.png", False), ("./x.png", False), ("a/", False), ("x\x1b[2J.png", False),
                                      ("x\udcff.png", False)])
def test_check_name(name, ok):
    assert (C.check_name(name) is None) == ok

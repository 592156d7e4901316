"""Split computing over a real loopback socket: same answers as one process, and a server that survives bad clients."""
import socket
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from bitstream.serial import ByteReader
from cli.main import main
from codec.device import cpu_thread_limit
from codec.errors import UserError
from codec.features import model_file
from codec.features.data import load_dataset
from codec.features.split import MAGIC, MSG_LATENT, SplitClient, SplitServer, bind_listener, read_frame, run_session

from tests.students import train_tiny_models

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with cpu_thread_limit(CPU, limit=1):
        yield


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    d = train_tiny_models(tmp_path_factory.mktemp("split"), {"student": 0.3})
    return str(d / "student.safetensors")


@pytest.fixture
def server(student_file):
    student, model_id = model_file.load_student(student_file)
    with SplitServer(student, model_id, CPU, port=0, max_frame=4096, frame_timeout=5.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds.images[:10], ds.labels[:10].tolist()


def client(student_file, srv):
    student, model_id = model_file.load_student(student_file)
    return SplitClient(student, model_id, CPU, srv.host, srv.port)


def raw_connect(srv) -> socket.socket:
    return socket.create_connection((srv.host, srv.port), timeout=5)


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def hello(srv) -> bytes:
    return frame(MAGIC + srv.model_id.encode())


def reply_status(sock) -> int | None:
    body = read_frame(sock)
    return None if body is None else ByteReader(body).u8()


def closed(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_server_answers_like_the_whole_student_in_one_process(student_file, server, digits):
    images, labels = digits
    student, _ = model_file.load_student(student_file)
    with torch.no_grad():
        whole = student(images.float() / 255).argmax(1).tolist()
    with client(student_file, server) as c:
        results = [c.classify(img) for img in images]
    assert [r.predicted for r in results] == whole
    for r in results:
        assert r.payload_bytes > 0 and r.wire_bytes == r.payload_bytes + 5
        assert r.round_trip_ms >= 0 and r.server_ms >= 0
    assert server.stats.images == len(images) and server.stats.errors == 0


def test_live_session_counts_accuracy(student_file, server, digits, capsys):
    images, labels = digits
    with client(student_file, server) as c:
        session = run_session(c, images, labels[:-1] + [None], every=5)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "sent" and len(out) == 3        # header, after 5, after 10
    assert session.labelled == 9 and len(session.results) == 10


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\n\r\n",                                   # not our protocol: a 1.2 GB "length"
    struct.pack("<I", 2**31) + b"xx",                          # an oversized length
    struct.pack("<I", 5000) + b"x" * 10,                        # over this server's 4096-byte limit
    frame(b"NCSPLIT2" + b"0" * 16),                             # a HELLO with the wrong model id
    frame(b"hello"),                                            # a malformed HELLO
])
def test_bad_first_frames_get_an_error_and_the_server_keeps_serving(student_file, server, digits, bad):
    s = raw_connect(server)
    s.sendall(bad)
    assert reply_status(s) == 1                                 # an error reply ...
    assert closed(s)                                            # ... then the connection is closed
    s.close()
    with client(student_file, server) as c:                     # a following good client is served
        assert isinstance(c.classify(digits[0][0]).predicted, int)
    assert server.stats.errors == 1


@pytest.mark.parametrize("bad", [
    frame(b""),                                                 # an empty frame
    frame(b"\x07junk"),                                         # an unknown message type
    frame(bytes([MSG_LATENT])),                                 # a latent of no bytes
])
def test_bad_frames_after_hello_get_an_error(student_file, server, digits, bad):
    s = raw_connect(server)
    s.sendall(hello(server))
    assert reply_status(s) == 0
    s.sendall(bad)
    assert reply_status(s) == 1
    assert closed(s)
    s.close()
    with client(student_file, server) as c:
        c.classify(digits[0][0])
    assert server.stats.errors == 1


def test_client_vanishing_mid_frame_costs_only_its_connection(student_file, server, digits):
    s = raw_connect(server)
    s.sendall(hello(server))
    assert reply_status(s) == 0
    s.sendall(struct.pack("<I", 100) + b"\x01" + b"\x00" * 20)   # 21 of 100 promised bytes, then gone
    s.close()
    with client(student_file, server) as c:
        c.classify(digits[0][0])
    s = raw_connect(server)
    s.sendall(b"\x10\x00")                                        # half a length prefix
    s.close()
    with client(student_file, server) as c:
        c.classify(digits[0][0])


def test_wrong_model_is_refused_with_a_user_error(student_file, server):
    student, _ = model_file.load_student(student_file)
    with pytest.raises(UserError, match="refused"):
        SplitClient(student, "0123456789abcdef", CPU, server.host, server.port)


def test_port_in_use_is_a_user_error(capsys, student_file):
    holder = bind_listener("127.0.0.1", 0)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(UserError, match="already in use"):
            bind_listener("127.0.0.1", port)
        code = main(["split", "serve", "--model", student_file, "--port", str(port), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "already in use" in err
    finally:
        holder.close()


def test_send_to_nobody_is_one_line(capsys, student_file, tmp_path):
    probe = bind_listener("127.0.0.1", 0)
    free = probe.getsockname()[1]
    probe.close()                                                # nothing listens there now
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    code = main(["split", "send", str(tmp_path / "a.png"), "--model", student_file, "--port", str(free),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no split server" in err

"""The split server under hostile clients, over real loopback sockets (127.0.0.1 only).

Frame deadlines (trickling and idle clients are dropped), the connection cap (a clear "server busy" refusal, no
thread per refused client), one log line per connection, and a bounded soak: slow, garbage, huge-length and
disconnecting clients run beside a well-behaved one, which is served every time. Every loop here is bounded in
count and in time; timing is never asserted beyond "it finishes" (joins and polls have generous limits).
"""
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from bitstream.serial import ByteReader
from cli.main import main
from codec.device import cpu_thread_limit
from codec.errors import UserError
from codec.features import model_file
from codec.features.data import load_dataset
from codec.features.split import MAGIC, MSG_LATENT, SplitClient, SplitServer, read_frame

CPU = torch.device("cpu")
MODEL = str(Path(__file__).parent / "fixtures" / "student_model.safetensors")
LINE = re.compile(r"^127\.0\.0\.1:\d+: (\d+) images, (\d+) bytes in, (\d+) bytes out, [\d.]+ s, (.+)$")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with cpu_thread_limit(CPU, limit=1):
        yield


@pytest.fixture(scope="module")
def images():
    student, _ = model_file.load_student(MODEL)
    ds = load_dataset("digits")
    imgs = ds.images[:4]
    with torch.no_grad():
        expected = student(imgs.float() / 255).argmax(1).tolist()
    return imgs, expected


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def connections(self) -> list[re.Match]:
        return [m for m in map(LINE.match, list(self)) if m]


def make_server(**kw) -> tuple[SplitServer, Log]:
    student, model_id = model_file.load_student(MODEL)
    log = Log()
    kw.setdefault("frame_timeout", 1.0)
    return SplitServer(student, model_id, CPU, host="127.0.0.1", port=0, max_frame=4096, log=log, **kw), log


_STUDENT: list = []


def good_client(srv) -> SplitClient:
    if not _STUDENT:
        _STUDENT.extend(model_file.load_student(MODEL))
    student, model_id = _STUDENT
    return SplitClient(student, model_id, CPU, srv.host, srv.port, timeout=30)


def raw(srv) -> socket.socket:
    return socket.create_connection((srv.host, srv.port), timeout=30)


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def reply(sock) -> tuple[int, str] | None:
    """(status, error message or "") of the next reply; None if the server closed."""
    try:
        body = read_frame(sock)
    except (ConnectionResetError, BrokenPipeError):
        return None
    if body is None:
        return None
    r = ByteReader(body)
    status = r.u8()
    return status, (r.str_(1000) if status == 1 else "")


def closed(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def wait_until(cond, limit: float = 30.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def classify_once(srv, images) -> None:
    imgs, expected = images
    with good_client(srv) as c:
        for img, want in zip(imgs, expected):
            assert c.classify(img).predicted == want


# ---------------------------------------------------------------------------------------------------------------
# frame deadlines


def test_a_trickling_client_is_dropped_before_its_frame_is_complete(images):
    srv, log = make_server(frame_timeout=1.0)
    with srv:
        s = raw(srv)
        s.sendall(frame(MAGIC + srv.model_id.encode()))
        assert reply(s) == (0, "")
        latent = struct.pack("<I", 200) + bytes([MSG_LATENT]) + b"\x00" * 199     # a 200-byte frame ...
        sent = 0
        for byte in latent:                                                        # ... one byte every 0.1 s
            try:
                s.send(bytes([byte]))
            except OSError:
                break
            sent += 1
            if select.select([s], [], [], 0.1)[0]:                                 # the server has spoken
                break
        assert sent < len(latent)                     # each read was quick, yet the frame was cut off
        status, message = reply(s)
        assert status == 1 and "no complete frame within 1 s" in message
        assert closed(s)
        s.close()
        classify_once(srv, images)                    # and the next client is served
        assert wait_until(lambda: srv.active == 0)
    assert srv.stats.errors == 1
    assert any("dropped: no complete frame within 1 s" in m.group(4) for m in log.connections()), list(log)


@pytest.mark.parametrize("after_hello", [False, True])
def test_an_idle_client_is_dropped_at_the_deadline(images, after_hello):
    srv, _ = make_server(frame_timeout=0.5)
    with srv:
        s = raw(srv)
        if after_hello:
            s.sendall(frame(MAGIC + srv.model_id.encode()))
            assert reply(s) == (0, "")
        status, message = reply(s)                    # sent nothing: the deadline still ends the connection
        assert status == 1 and "no complete frame within 0.5 s" in message
        assert closed(s)
        s.close()
        classify_once(srv, images)


# ---------------------------------------------------------------------------------------------------------------
# the connection cap


def test_clients_beyond_the_cap_are_refused_clearly_and_a_freed_slot_serves_again(images):
    srv, log = make_server(frame_timeout=30.0, max_clients=2)
    with srv:
        holders = [good_client(srv), good_client(srv)]                  # both slots taken (HELLO answered)
        assert srv.active == 2
        with pytest.raises(UserError, match="refused: server busy: all 2 connection slots are taken"):
            good_client(srv)
        s = raw(srv)                                                    # a raw client: the refusal comes first
        status, message = reply(s)
        assert status == 1 and message.startswith("server busy")
        assert closed(s)
        s.close()
        assert srv.stats.refused == 2 and srv.active == 2
        holders[0].classify(images[0][0])                               # the holders are still served
        holders.pop(0).close()
        assert wait_until(lambda: srv.active == 1)
        classify_once(srv, images)                                      # the freed slot serves a new client
        holders[0].close()
        assert wait_until(lambda: srv.active == 0)
    refusals = [m for m in log.connections() if m.group(4).startswith("refused: server busy")]
    assert len(refusals) == 2


def test_split_send_to_a_full_server_is_one_line_and_exit_2(images, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(images[0][0, 0].numpy()).save(tmp_path / "a.png")
    srv, _ = make_server(frame_timeout=30.0, max_clients=1)
    with srv:
        with good_client(srv):
            code = main(["split", "send", str(tmp_path / "a.png"), "--model", MODEL, "--port", str(srv.port),
                         "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "server busy" in err[0]


def test_many_slow_clients_make_no_more_threads_than_the_cap():
    srv, _ = make_server(frame_timeout=30.0, max_clients=4)
    with srv:
        base = threading.active_count()                                # this process's threads, the acceptor too
        socks = []
        try:
            for _ in range(40):                                        # 40 clients that send nothing
                socks.append(raw(srv))
            assert wait_until(lambda: srv.stats.connections + srv.stats.refused == 40)
            peak = threading.active_count()
            assert srv.stats.connections == 4 and srv.stats.refused == 36
            assert peak <= base + 4
        finally:
            for s in socks:
                s.close()
        assert wait_until(lambda: srv.active == 0)


# ---------------------------------------------------------------------------------------------------------------
# one log line per connection


def test_one_log_line_per_connection_with_peer_images_bytes_and_time(images):
    srv, log = make_server(frame_timeout=5.0)
    with srv:
        with good_client(srv) as c:
            peer = "127.0.0.1:%d" % c.sock.getsockname()[1]
            results = [c.classify(img) for img in images[0][:3]]
        s = raw(srv)
        s.sendall(b"\xff\xff\xff\xff")                                # a huge length prefix
        assert reply(s)[0] == 1
        s.close()
        assert wait_until(lambda: srv.active == 0)
    lines = log.connections()
    assert len(lines) == 2 and len(log) == 2
    good = next(m for m in lines if m.group(0).startswith(peer + ":"))
    assert int(good.group(1)) == 3
    assert int(good.group(2)) == 4 + len(MAGIC) + 16 + sum(r.wire_bytes for r in results) + 5   # HELLO, latents, BYE
    assert int(good.group(3)) > 0 and good.group(4) == "closed by the client"
    bad = next(m for m in lines if m is not good)
    assert int(bad.group(1)) == 0 and bad.group(4).startswith("dropped: frame of 4294967295 bytes exceeds")


# ---------------------------------------------------------------------------------------------------------------
# the soak


def _slow(srv, stop):                     # a HELLO at a byte per 0.15 s: dropped at the 2 s deadline
    s = raw(srv)
    try:
        for b in frame(MAGIC + srv.model_id.encode()):
            if stop.is_set() or select.select([s], [], [], 0.15)[0]:
                break
            s.send(bytes([b]))
    finally:
        s.close()


def _garbage(srv, stop, rng):
    s = raw(srv)
    try:
        s.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))))
        select.select([s], [], [], 2)                              # an error reply, a close, or a deadline
    finally:
        s.close()


def _huge(srv, stop, rng):
    s = raw(srv)
    try:
        if rng.random() < 0.5:
            s.sendall(frame(MAGIC + srv.model_id.encode()))
            reply(s)
        s.sendall(struct.pack("<I", rng.choice([2**32 - 1, 2**31, 4097])) + b"x" * 16)
        reply(s)
    finally:
        s.close()


def _disconnecting(srv, stop, rng):
    s = raw(srv)
    try:
        choice = rng.randrange(3)
        if choice == 0:
            s.sendall(b"\x10\x00")                                  # half a length prefix
        elif choice == 1:
            s.sendall(frame(MAGIC + srv.model_id.encode()))
            reply(s)
            s.sendall(struct.pack("<I", 100) + bytes([MSG_LATENT]) + b"\x00" * 20)   # 21 of 100 bytes
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a close
            s.sendall(frame(MAGIC + srv.model_id.encode()))
    finally:
        s.close()


def test_soak_hostile_clients_never_stop_a_well_behaved_one(images):
    imgs, expected = images
    srv, log = make_server(frame_timeout=2.0, max_clients=16)     # 4 attackers at a time leave room for the good
    stop = threading.Event()
    failures: list[str] = []
    attacks = [0]

    def attacker(kind, seed):
        rng = random.Random(seed)
        for _ in range(200):                                       # bounded in count ...
            if stop.is_set():
                return
            try:
                kind(srv, stop, rng) if kind is not _slow else kind(srv, stop)
                attacks[0] += 1
            except OSError:
                pass                                               # a reset is the attacker's problem
            except Exception as e:  # noqa: BLE001
                failures.append(f"attacker {kind.__name__}: {type(e).__name__}: {e}")

    served = 0
    with srv:
        threads = [threading.Thread(target=attacker, args=(k, i), daemon=True)
                   for i, k in enumerate([_slow, _garbage, _huge, _disconnecting])]
        for t in threads:
            t.start()
        try:
            end = time.monotonic() + 4.0                           # ... and in time
            with good_client(srv) as persistent:
                for i in range(400):
                    if time.monotonic() > end:
                        break
                    k = i % len(imgs)
                    assert persistent.classify(imgs[k]).predicted == expected[k]
                    if i % 5 == 0:
                        classify_once(srv, images)                 # fresh connections are accepted too
                    served += 1
                    time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert not failures, failures
        assert served > 0 and attacks[0] > 0
        classify_once(srv, images)                                 # still serving after the storm
        assert wait_until(lambda: srv.active == 0)
        lines = log.connections()
        assert len(lines) == srv.stats.connections + srv.stats.refused   # one line per connection
        assert srv.stats.errors > 0 and srv.stats.refused == 0


# ---------------------------------------------------------------------------------------------------------------
# the command


def test_serve_command_logs_connections_and_refuses_beyond_max_clients(images):
    cmd = [sys.executable, "-m", "ncodec", "split", "serve", "--model", MODEL, "--port", "0", "--device", "cpu",
           "--frame-timeout", "2", "--max-clients", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    seen = lambda text: any(text in line for line in list(lines))  # noqa: E731
    try:
        assert wait_until(lambda: seen("Ctrl-C stops"), 120), lines
        start = next(line for line in lines if "Ctrl-C stops" in line)
        m = re.search(r"on 127\.0\.0\.1:(\d+) .*up to 1 clients, 2 s per frame", start)
        assert m, start

        class Addr:
            host, port = "127.0.0.1", int(m.group(1))
        with good_client(Addr) as c:
            c.classify(images[0][0])
            with pytest.raises(UserError, match="server busy"):
                good_client(Addr)
        assert wait_until(lambda: seen("closed by the client")), lines     # the slot is free again
        s = socket.create_connection((Addr.host, Addr.port), timeout=30)
        assert reply(s) == (1, "no complete frame within 2 s")             # idle: dropped at the deadline
        s.close()
        assert wait_until(lambda: seen("dropped: no complete frame")), lines
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    conn_lines = [line for line in lines if re.match(r"ncodec split serve: 127\.0\.0\.1:\d+: \d+ images", line)]
    assert len(conn_lines) == 3, lines                                       # refused, served, idle
    assert "0 images" in conn_lines[0] and "refused: server busy" in conn_lines[0]
    assert "1 images" in conn_lines[1] and "closed by the client" in conn_lines[1]
    assert "dropped: no complete frame within 2 s" in conn_lines[2]
    assert seen("served 1 images on 2 connections, 1 dropped for an error, 1 refused"), lines
    assert proc.returncode == 0


def test_serve_rejects_bad_limits(capsys):
    for flag, value in (("--max-clients", "0"), ("--frame-timeout", "0")):
        code = main(["split", "serve", "--model", MODEL, "--port", "0", "--device", "cpu", flag, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and flag in err[0]

"""Split computing over TCP: the device half encodes, the server half decodes and classifies.

Framing: every message is a frame = u32 little-endian body length, then the body (at most `max_frame` bytes).

    client -> server   HELLO   b"NCSPLIT2" + the student's model id (16 ASCII hex digits)
    server -> client   REPLY   u8 0 + str "ok"            | u8 1 + str error, then the server closes
    client -> server   LATENT  u8 1 + one image's range-coded latent (the rest of the frame)
    server -> client   REPLY   u8 0 + varint class + f32 server ms | u8 1 + str error, then the server closes
    client -> server   BYE     u8 2 (or simply close the connection between frames)

Strings are ByteWriter strings (varint length + UTF-8). A malformed frame, an oversized length, a wrong model id or a
client that stalls or vanishes mid-frame costs that one connection: it gets an error reply where a reply can still be
sent, the connection is closed, and the server goes on serving everyone else (one thread per connection).
"""
from __future__ import annotations

import errno
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from bitstream.errors import BitstreamError
from bitstream.serial import ByteReader, ByteWriter
from codec.errors import UserError
from codec.features.codec import LatentCoder, classify_symbols, encode_images
from codec.features.student import Student

MAGIC = b"NCSPLIT2"     # 2: latents are trimmed streams (bitstream.coder.trim_stream)
MSG_LATENT, MSG_BYE = 1, 2
STATUS_OK, STATUS_ERROR = 0, 1
DEFAULT_MAX_FRAME = 1 << 20          # 1 MiB: far above one latent, small enough that a liar cannot exhaust memory
DEFAULT_TIMEOUT = 30.0               # seconds a connection may stall in the middle of a frame
_LEN = struct.Struct("<I")


class ProtocolError(Exception):
    """The peer broke the framing or the protocol; the connection is closed after an error reply."""


# ---------------------------------------------------------------------------------------------------------------
# framing


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """n bytes, or fewer only if the peer closed the connection."""
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 65536))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> bytes | None:
    """One frame's body; None when the peer closed cleanly between frames."""
    head = _recv_exact(sock, 4)
    if not head:
        return None
    if len(head) < 4:
        raise ProtocolError("connection closed inside a frame's length")
    (n,) = _LEN.unpack(head)
    if n > max_frame:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {max_frame}")
    body = _recv_exact(sock, n)
    if len(body) < n:
        raise ProtocolError(f"connection closed after {len(body)} of {n} bytes of a frame")
    return body


def write_frame(sock: socket.socket, body: bytes) -> int:
    """Send one frame; returns the bytes put on the wire."""
    sock.sendall(_LEN.pack(len(body)) + body)
    return 4 + len(body)


def _ok(*fields: Callable[[ByteWriter], None]) -> bytes:
    w = ByteWriter()
    w.u8(STATUS_OK)
    for f in fields:
        f(w)
    return w.getvalue()


def _error(message: str) -> bytes:
    w = ByteWriter()
    w.u8(STATUS_ERROR)
    w.str_(message[:1000])
    return w.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# the server half


@dataclass
class ServerStats:
    connections: int = 0
    images: int = 0
    errors: int = 0
    last_error: str = ""


class SplitServer:
    """Entropy decoding, the student's decoder and tail; answers each latent with its class."""

    def __init__(self, student: Student, model_id: str, device: torch.device, host: str = "127.0.0.1",
                 port: int = 0, max_frame: int = DEFAULT_MAX_FRAME, timeout: float = DEFAULT_TIMEOUT,
                 log: Callable[[str], None] | None = None):
        self.student, self.model_id, self.device = student.eval(), model_id, device
        self.coder = LatentCoder(student)
        self.max_frame, self.timeout = max_frame, timeout
        self.log = log or (lambda msg: None)
        self.stats = ServerStats()
        self._lock = threading.Lock()           # one inference at a time: steady timings, no thread oversubscription
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock = bind_listener(host, port)
        self.host, self.port = self._sock.getsockname()[:2]

    # -- lifecycle
    def serve_forever(self) -> None:
        self._sock.settimeout(0.2)               # wake up to notice close()
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            self.stats.connections += 1
            threading.Thread(target=self._serve_connection, args=(conn, addr), daemon=True).start()

    def start(self) -> "SplitServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> "SplitServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one client
    def _serve_connection(self, conn: socket.socket, addr) -> None:
        conn.settimeout(self.timeout)
        peer = f"{addr[0]}:{addr[1]}"
        try:
            with conn:
                try:
                    self._session(conn)
                except (ProtocolError, BitstreamError, ValueError) as e:
                    self._fail(conn, peer, str(e))
                except (socket.timeout, TimeoutError):
                    self._fail(conn, peer, f"no data for {self.timeout:g} s")
                except OSError as e:             # reset by peer, broken pipe: nothing left to answer
                    self._count_error(peer, f"connection error: {e.strerror or e}")
        except Exception as e:  # noqa: BLE001 -- a bug must cost one connection, never the whole server
            self._count_error(peer, f"internal error: {type(e).__name__}: {e}")

    def _session(self, conn: socket.socket) -> None:
        hello = read_frame(conn, self.max_frame)
        if hello is None:
            return
        if len(hello) != len(MAGIC) + 16 or not hello.startswith(MAGIC):
            raise ProtocolError(f"expected a HELLO frame ({MAGIC!r} + model id)")
        client_id = hello[len(MAGIC):].decode("ascii", "replace")
        if client_id != self.model_id:
            raise ProtocolError(f"the client encodes with student {client_id}, this server decodes with "
                                f"{self.model_id}")
        write_frame(conn, _ok(lambda w: w.str_("ok")))
        while True:
            frame = read_frame(conn, self.max_frame)
            if frame is None or frame[:1] == bytes([MSG_BYE]):
                return
            if frame[:1] != bytes([MSG_LATENT]):
                raise ProtocolError(f"unknown message type {frame[0] if frame else 'none (empty frame)'}")
            t0 = time.perf_counter()
            with self._lock:
                symbols = self.coder.decode(frame[1:])
                cls = int(classify_symbols(self.student, symbols[None], self.device)[0])
            ms = (time.perf_counter() - t0) * 1000
            self.stats.images += 1
            write_frame(conn, _ok(lambda w: w.varint(cls), lambda w: w.f32(ms)))

    def _fail(self, conn: socket.socket, peer: str, message: str) -> None:
        self._count_error(peer, message)
        try:
            write_frame(conn, _error(message))
            # close gracefully: closing with unread input would send a TCP reset, which can destroy the error
            # reply before the client reads it; so stop sending, then drain a little of what the client still sends
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.5)
            drained = 0
            while drained < 1 << 16 and (chunk := conn.recv(4096)):
                drained += len(chunk)
        except OSError:
            pass                                  # the peer is gone (or stalls); closing is all that is left

    def _count_error(self, peer: str, message: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = message
        self.log(f"{peer}: {message}")


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket; a port in use or an unknown host is a one-line UserError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


# ---------------------------------------------------------------------------------------------------------------
# the device half


@dataclass
class SendResult:
    predicted: int
    payload_bytes: int      # the range-coded latent
    wire_bytes: int         # the whole frame on the wire (length prefix + type byte + latent)
    encode_ms: float        # device side: encoder network, quantisation, entropy coding
    round_trip_ms: float    # send to reply: network plus the server's work
    server_ms: float        # what the server reports for entropy decoding + decoder + tail


class SplitClient:
    """Encoder, quantisation and entropy coding on this machine; the server does the rest."""

    def __init__(self, student: Student, model_id: str, device: torch.device, host: str, port: int,
                 timeout: float = DEFAULT_TIMEOUT):
        self.student, self.device = student.eval(), device
        self.coder = LatentCoder(student)
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            raise UserError(f"no split server is listening on {host}:{port}") from None
        except socket.gaierror as e:
            raise UserError(f"unknown host {host}: {e.strerror}") from None
        except (socket.timeout, TimeoutError):
            raise UserError(f"connecting to {host}:{port} timed out") from None
        except OSError as e:
            raise UserError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        write_frame(self.sock, MAGIC + model_id.encode("ascii"))
        self._reply()

    def _reply(self) -> ByteReader:
        try:
            body = read_frame(self.sock)
        except ProtocolError as e:
            raise UserError(f"split server: {e}") from None
        if body is None:
            raise UserError("the split server closed the connection")
        r = ByteReader(body, "server reply")
        if r.u8() != STATUS_OK:
            raise UserError(f"split server refused: {r.str_(1000)}")
        return r

    def classify(self, image: torch.Tensor) -> SendResult:
        """One uint8 image [C, H, W] through the split model."""
        t0 = time.perf_counter()
        symbols = encode_images(self.student, image[None], self.device)[0]
        stream = self.coder.encode(symbols)
        t1 = time.perf_counter()
        wire = write_frame(self.sock, bytes([MSG_LATENT]) + stream)
        r = self._reply()
        t2 = time.perf_counter()
        cls, server_ms = r.varint(), r.f32()
        return SendResult(cls, len(stream), wire, (t1 - t0) * 1000, (t2 - t1) * 1000, server_ms)

    def close(self) -> None:
        try:
            write_frame(self.sock, bytes([MSG_BYE]))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "SplitClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# a session with a live table


@dataclass
class Session:
    results: list[SendResult] = field(default_factory=list)
    correct: int = 0
    labelled: int = 0

    def add(self, r: SendResult, label: int | None) -> None:
        self.results.append(r)
        if label is not None:
            self.labelled += 1
            self.correct += int(r.predicted == label)

    def row(self) -> dict[str, Any]:
        n = len(self.results)
        mean = lambda key: float(np.mean([getattr(r, key) for r in self.results]))  # noqa: E731
        return {"sent": n, "bytes/image": mean("payload_bytes"), "wire bytes/image": mean("wire_bytes"),
                "accuracy": (self.correct / self.labelled) if self.labelled else None,
                "encode ms": mean("encode_ms"), "round trip ms": mean("round_trip_ms"),
                "server ms": mean("server_ms")}


LIVE_COLUMNS = (("sent", 6, "d"), ("bytes/image", 12, ".1f"), ("wire bytes/image", 17, ".1f"),
                ("accuracy", 9, ".2%"), ("encode ms", 10, ".2f"), ("round trip ms", 14, ".2f"),
                ("server ms", 10, ".2f"))


def _live_line(row: dict[str, Any] | None) -> str:
    if row is None:
        return "  ".join(name.rjust(w) for name, w, _ in LIVE_COLUMNS)
    cells = []
    for name, w, fmt in LIVE_COLUMNS:
        v = row[name]
        cells.append(("-" if v is None else format(v, fmt)).rjust(w))
    return "  ".join(cells)


def run_session(client: SplitClient, images: torch.Tensor, labels: list[int | None], live: bool = True,
                out=None, every: int | None = None) -> Session:
    """Send every image, printing a running table (every `every` images and at the end)."""
    out = out or sys.stdout
    session = Session()
    n = images.shape[0]
    every = every or max(1, n // 20)
    if live:
        print(_live_line(None), file=out, flush=True)
    for i in range(n):
        session.add(client.classify(images[i]), labels[i])
        if live and ((i + 1) % every == 0 or i + 1 == n):
            print(_live_line(session.row()), file=out, flush=True)
    return session

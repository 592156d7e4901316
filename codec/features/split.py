"""Split computing over TCP: the device half encodes, the server half decodes and classifies.

Framing: every message is a frame = u32 little-endian body length, then the body (at most `max_frame` bytes).

    client -> server   HELLO   b"NCSPLIT2" + the student's model id (16 ASCII hex digits)
    server -> client   REPLY   u8 0 + str "ok"            | u8 1 + str error, then the server closes
    client -> server   LATENT  u8 1 + one image's range-coded latent (the rest of the frame)
    server -> client   REPLY   u8 0 + varint class + f32 server ms | u8 1 + str error, then the server closes
    client -> server   BYE     u8 2 (or simply close the connection between frames)

Strings are ByteWriter strings (varint length + UTF-8). A malformed frame, an oversized length, a wrong model id or a
client that stalls or vanishes mid-frame costs that one connection: it gets an error reply where a reply can still be
sent, the connection is closed, and the server goes on serving everyone else.

Bounds: each frame must arrive complete within `frame_timeout` seconds of the server being ready for it (after the
connection is accepted, or after the reply to the previous frame), so a client that trickles bytes, or sits idle,
is dropped. At most `max_clients` connections are served at once, each by its own thread; a connection beyond that
gets the ordinary error reply "server busy: ..." straight away (today's clients print it) and is closed, from the
accepting thread, without a thread of its own. Every connection ends with one log line: peer, images, bytes in and
out, seconds, and how it ended.

`ServerProcess` runs a server in a child process (`ncodec split demo`): the child prints `READY host port model_id`
on stdout once it listens and serves until its stdin closes, which happens however the parent ends.
"""
from __future__ import annotations

import errno
import queue
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
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
DEFAULT_FRAME_TIMEOUT = 30.0         # seconds within which a whole frame must arrive
DEFAULT_TIMEOUT = DEFAULT_FRAME_TIMEOUT   # the client's wait for a reply
DEFAULT_MAX_CLIENTS = 64             # connections served at once; more are refused with "server busy"
CLOSE_GRACE = 1.0                    # seconds a dropped or refused client gets to read its error reply
MAX_CLOSING = 128                    # refused connections waiting for their client to read the refusal
_DRAIN_LIMIT = 1 << 16               # bytes read (and thrown away) from a closing connection, at most
_LEN = struct.Struct("<I")


class ProtocolError(Exception):
    """The peer broke the framing or the protocol; the connection is closed after an error reply."""


class FrameTimeout(ProtocolError):
    """A frame did not arrive complete before its deadline."""


# ---------------------------------------------------------------------------------------------------------------
# framing


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None, counter: Any = None) -> bytes:
    """n bytes, or fewer only if the peer closed the connection.

    With a deadline (time.monotonic()), all n bytes must arrive before it, whatever the pace (FrameTimeout);
    without one the socket's own timeout applies to each read. `counter.bytes_in` counts what arrives."""
    parts, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrameTimeout("frame deadline passed")
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - got, 65536))
        except TimeoutError:
            if deadline is None:
                raise
            raise FrameTimeout("frame deadline passed") from None
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
        if counter is not None:
            counter.bytes_in += len(chunk)
    return b"".join(parts)


def read_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME, deadline: float | None = None,
               counter: Any = None) -> bytes | None:
    """One frame's body; None when the peer closed cleanly between frames.

    `deadline` (time.monotonic()): the whole frame, length prefix and body, must be in by then (FrameTimeout)."""
    head = _recv_exact(sock, 4, deadline, counter)
    if not head:
        return None
    if len(head) < 4:
        raise ProtocolError("connection closed inside a frame's length")
    (n,) = _LEN.unpack(head)
    if n > max_frame:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {max_frame}")
    body = _recv_exact(sock, n, deadline, counter)
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
    connections: int = 0    # connections served (given a slot)
    images: int = 0
    errors: int = 0         # served connections dropped for an error (bad frame, deadline, ...)
    refused: int = 0        # connections refused because every slot was taken
    last_error: str = ""


@dataclass
class ConnectionRecord:
    """What one connection did; logged as one line when it ends."""
    peer: str
    started: float = field(default_factory=time.monotonic)
    images: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    outcome: str = "closed by the client"

    def line(self) -> str:
        return (f"{self.peer}: {self.images} images, {self.bytes_in} bytes in, {self.bytes_out} bytes out, "
                f"{time.monotonic() - self.started:.2f} s, {self.outcome}")


class SplitServer:
    """Entropy decoding, the student's decoder and tail; answers each latent with its class."""

    def __init__(self, student: Student, model_id: str, device: torch.device, host: str = "127.0.0.1",
                 port: int = 0, max_frame: int = DEFAULT_MAX_FRAME, frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
                 max_clients: int = DEFAULT_MAX_CLIENTS, log: Callable[[str], None] | None = None):
        if not frame_timeout > 0:
            raise UserError(f"the frame timeout must be positive, got {frame_timeout}")
        if max_clients < 1:
            raise UserError(f"the client limit must be at least 1, got {max_clients}")
        self.student, self.model_id, self.device = student.eval(), model_id, device
        self.coder = LatentCoder(student)
        self.max_frame, self.frame_timeout, self.max_clients = max_frame, frame_timeout, max_clients
        self.log = log if log is not None else (lambda msg: None)
        self.stats = ServerStats()
        self._infer = threading.Lock()          # one inference at a time: steady timings, no thread oversubscription
        self._state = threading.Lock()          # stats and the table of active connections
        self._active: dict[socket.socket, threading.Thread] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_accept_error = 0.0
        self._sock = bind_listener(host, port, backlog=max(64, min(max_clients, 1024)))
        self.host, self.port = self._sock.getsockname()[:2]

    @property
    def active(self) -> int:
        """Connections being served right now."""
        with self._state:
            return len(self._active)

    # -- lifecycle
    def serve_forever(self) -> None:
        """Accept until close(): one thread per served connection, refusals handled here without threads."""
        sel = selectors.DefaultSelector()
        self._sock.setblocking(False)
        sel.register(self._sock, selectors.EVENT_READ)
        closing: dict[socket.socket, list] = {}          # refused connection -> [deadline, bytes drained]
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):           # wake up to notice close()
                    if key.fileobj is self._sock:
                        self._accept_ready(sel, closing)
                    else:
                        self._drain(sel, closing, key.fileobj)
                now = time.monotonic()
                for s, (until, _) in list(closing.items()):
                    if now >= until:
                        self._forget(sel, closing, s)
        finally:
            for s in list(closing):
                self._forget(sel, closing, s)
            sel.close()

    def start(self) -> "SplitServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="split-accept")
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, end the connections being served, and wait (briefly) for their threads."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        with self._state:
            active = list(self._active.items())
        for conn, _ in active:
            try:
                conn.shutdown(socket.SHUT_RDWR)           # wakes the thread blocked on it
            except OSError:
                pass
        for _, thread in active:
            thread.join(timeout=5)

    def __enter__(self) -> "SplitServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- accepting and refusing
    def _accept_ready(self, sel: selectors.BaseSelector, closing: dict) -> None:
        for _ in range(64):                                # then give the refused connections a turn
            try:
                conn, addr = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if self._stop.is_set():
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # out of file descriptors or memory: say so (at most every 5 s), back off, keep the server up
                now = time.monotonic()
                if now - self._last_accept_error > 5:
                    self._last_accept_error = now
                    self._log(f"cannot accept a connection: {e.strerror or e}")
                time.sleep(0.05)
                return
            record = ConnectionRecord(_peer(addr))
            with self._state:
                full = len(self._active) >= self.max_clients
                if not full:
                    thread = threading.Thread(target=self._serve_connection, args=(conn, record), daemon=True,
                                              name=f"split-{record.peer}")
                    self._active[conn] = thread
                    self.stats.connections += 1
            if full:
                self._refuse(sel, closing, conn, record)
                continue
            try:
                thread.start()
            except RuntimeError as e:                      # the system will not give us another thread
                with self._state:
                    self._active.pop(conn, None)
                    self.stats.connections -= 1
                self._refuse(sel, closing, conn, record, f"server busy: {e}")

    def _refuse(self, sel: selectors.BaseSelector, closing: dict, conn: socket.socket, record: ConnectionRecord,
                reason: str | None = None) -> None:
        """The error reply right away, then a graceful close that never blocks the accepting thread."""
        reason = reason or f"server busy: all {self.max_clients} connection slots are taken; try again later"
        with self._state:
            self.stats.refused += 1
        record.outcome = f"refused: {reason}"
        body = _error(reason)
        try:
            conn.setblocking(False)
            record.bytes_out = conn.send(_LEN.pack(len(body)) + body)   # a fresh socket's buffer has room
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
        else:
            if len(closing) < MAX_CLOSING:
                # closing with unread input would send a TCP reset, which can destroy the refusal before the client
                # reads it: read (and drop) what it sends until it closes, or for CLOSE_GRACE seconds
                closing[conn] = [time.monotonic() + CLOSE_GRACE, 0]
                sel.register(conn, selectors.EVENT_READ)
            else:
                conn.close()
        self._log(record.line())

    def _drain(self, sel: selectors.BaseSelector, closing: dict, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        closing[conn][1] += len(chunk)
        if not chunk or closing[conn][1] > _DRAIN_LIMIT:
            self._forget(sel, closing, conn)

    @staticmethod
    def _forget(sel: selectors.BaseSelector, closing: dict, conn: socket.socket) -> None:
        closing.pop(conn, None)
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    # -- one client, in its own thread
    def _serve_connection(self, conn: socket.socket, record: ConnectionRecord) -> None:
        try:
            with conn:
                try:
                    self._session(conn, record)
                except FrameTimeout:
                    self._fail(conn, record, f"no complete frame within {self.frame_timeout:g} s")
                except (ProtocolError, BitstreamError, ValueError) as e:
                    self._fail(conn, record, str(e))
                except TimeoutError:             # a reply that could not be sent: the client reads nothing
                    self._count_error(record, f"the client read no reply for {self.frame_timeout:g} s")
                except OSError as e:             # reset by peer, broken pipe: nothing left to answer
                    self._count_error(record, f"connection error: {e.strerror or e}")
        except Exception as e:  # noqa: BLE001 -- a bug must cost one connection, never the whole server
            self._count_error(record, f"internal error: {type(e).__name__}: {e}")
        finally:
            if self._stop.is_set() and record.outcome == "closed by the client":
                record.outcome = "closed: the server stopped"
            self._log(record.line())             # before leaving the table: active == 0 means every line is out
            with self._state:
                self._active.pop(conn, None)

    def _session(self, conn: socket.socket, record: ConnectionRecord) -> None:
        hello = read_frame(conn, self.max_frame, time.monotonic() + self.frame_timeout, record)
        if hello is None:
            return
        if len(hello) != len(MAGIC) + 16 or not hello.startswith(MAGIC):
            raise ProtocolError(f"expected a HELLO frame ({MAGIC!r} + model id)")
        client_id = hello[len(MAGIC):].decode("ascii", "replace")
        if client_id != self.model_id:
            raise ProtocolError(f"the client encodes with student {client_id}, this server decodes with "
                                f"{self.model_id}")
        self._send(conn, record, _ok(lambda w: w.str_("ok")))
        while True:
            # the deadline runs from now, when the server is ready for the frame: trickling and idling both end
            frame = read_frame(conn, self.max_frame, time.monotonic() + self.frame_timeout, record)
            if frame is None or frame[:1] == bytes([MSG_BYE]):
                return
            if frame[:1] != bytes([MSG_LATENT]):
                raise ProtocolError(f"unknown message type {frame[0] if frame else 'none (empty frame)'}")
            t0 = time.perf_counter()
            with self._infer:
                symbols = self.coder.decode(frame[1:])
                cls = int(classify_symbols(self.student, symbols[None], self.device)[0])
            ms = (time.perf_counter() - t0) * 1000
            record.images += 1
            with self._state:
                self.stats.images += 1
            self._send(conn, record, _ok(lambda w: w.varint(cls), lambda w: w.f32(ms)))

    def _send(self, conn: socket.socket, record: ConnectionRecord, body: bytes) -> None:
        conn.settimeout(self.frame_timeout)        # a client that never reads its replies is dropped too
        record.bytes_out += write_frame(conn, body)

    def _fail(self, conn: socket.socket, record: ConnectionRecord, message: str) -> None:
        self._count_error(record, message)
        try:
            conn.settimeout(CLOSE_GRACE)
            record.bytes_out += write_frame(conn, _error(message))
            # close gracefully: closing with unread input would send a TCP reset, which can destroy the error
            # reply before the client reads it; so stop sending, then drain a little of what the client still
            # sends, for CLOSE_GRACE seconds in all
            conn.shutdown(socket.SHUT_WR)
            until, drained = time.monotonic() + CLOSE_GRACE, 0
            while drained < _DRAIN_LIMIT and (left := until - time.monotonic()) > 0:
                conn.settimeout(left)
                chunk = conn.recv(4096)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass                                  # the peer is gone (or stalls); closing is all that is left

    def _log(self, line: str) -> None:
        try:
            self.log(line)
        except Exception:  # noqa: BLE001 -- a broken log (closed stderr) must not take a connection slot with it
            pass

    def _count_error(self, record: ConnectionRecord, message: str) -> None:
        with self._state:
            self.stats.errors += 1
            self.stats.last_error = message
        record.outcome = f"dropped: {message}"


def _peer(addr) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


def bind_listener(host: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening TCP socket; a port in use or an unknown host is a one-line UserError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


# ---------------------------------------------------------------------------------------------------------------
# the server half in a child process


READY = "ncsplit-ready"              # the child's stdout line once it listens: READY host port model_id
DEFAULT_START_TIMEOUT = 120.0        # seconds for a child to import torch, load the model and listen
STOP_GRACE = 10.0                    # seconds a serving child gets to stop after its stdin closes, then SIGTERM
                                     # gets, then SIGKILL


class ServerStartError(RuntimeError):
    """The server's child process failed before it listened with an exit code that means a bug (the CLI reports
    it as an internal error, exit 1)."""


def serve_until_stdin_closes(server: SplitServer, model_id: str, stdin=None, stdout=None) -> None:
    """The child's side of `ServerProcess`: serve in a thread, announce the address, return when stdin closes."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    server.start()
    print(f"{READY} {server.host} {server.port} {model_id}", file=stdout, flush=True)
    # the parent never writes: end of file means it closed the pipe or died (the kernel closes it then), so a
    # parent killed outright still leaves no server behind
    while stdin.read(4096):
        pass


class ServerProcess:
    """A split server in a child process (`argv` runs `serve_until_stdin_closes`), so that client and server share
    no interpreter and no interpreter lock. The context waits for the child's address, then always stops and reaps
    it, whether the block ends normally, with an error or with Ctrl-C.

    A child that cannot be started, does not listen in time, is killed, or exits with code 2 (it said why on its
    stderr in one `ncodec: error: ...` line) is a UserError; one that exits with another code is a
    ServerStartError."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, start_timeout: float | None = None):
        self.argv, self.env = list(argv), env
        self.start_timeout = DEFAULT_START_TIMEOUT if start_timeout is None else start_timeout
        self.proc: subprocess.Popen | None = None
        self.host, self.port, self.model_id = "", 0, ""
        self._stdout: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=50)      # the last lines, to say why a child failed
        self._readers: dict[str, threading.Thread] = {}

    def __enter__(self) -> "ServerProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            # a session of its own: Ctrl-C reaches the parent alone, which then stops the child in order
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=self.env, start_new_session=True)
        except OSError as e:
            raise UserError(f"cannot start the split server process: {e.strerror or e}") from None
        # both pipes are always drained, so that a child that logs a lot never blocks on a full pipe
        for name, pipe, sink, end in (("stdout", self.proc.stdout, self._stdout.put, True),
                                      ("stderr", self.proc.stderr, self._stderr.append, False)):
            t = threading.Thread(target=_pump, args=(pipe, sink, end), daemon=True, name=f"split-child-{name}")
            t.start()
            self._readers[name] = t
        deadline = time.monotonic() + self.start_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError(f"the split server process did not start within {self.start_timeout:g} s")
            try:
                line = self._stdout.get(timeout=min(left, 0.5))     # short waits: Ctrl-C is noticed at once
            except queue.Empty:
                continue
            if line is None:                              # stdout closed: the child ended without listening
                self._failed()
            parts = line.split()
            if len(parts) == 4 and parts[0] == READY and parts[2].isdigit():
                self.host, self.port, self.model_id = parts[1], int(parts[2]), parts[3]
                return

    def _failed(self) -> None:
        try:
            rc = self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            rc = None
        self._readers["stderr"].join(timeout=STOP_GRACE)  # the rest of what it said
        said = next((ln for ln in reversed(list(self._stderr)) if ln.startswith("ncodec: ")), "")
        if rc == 2 and said.startswith("ncodec: error: "):
            raise UserError(f"the split server did not start: {said[len('ncodec: error: '):]}")
        if rc is None or rc < 0:            # the machine's doing (out of memory, a kill), not a bug of ncodec's
            how = "closed its output" if rc is None else f"was killed by signal {-rc}"
            raise UserError(f"the split server process {how} before it listened")
        raise ServerStartError(f"the split server process exited with code {rc} before it listened"
                               + (f" ({said[len('ncodec: '):]})" if said else ""))

    def stop(self) -> None:
        """Close the child's stdin (it stops serving and exits), then SIGTERM, then SIGKILL; it is always reaped."""
        proc = self.proc
        if proc is None:
            return
        try:
            try:
                proc.stdin.close()
            except OSError:                                # a child already gone: nothing to tell
                pass
            # a child that is not serving yet reads no stdin (it is still loading): SIGTERM at once
            steps = (None, proc.terminate, proc.kill) if self.port else (proc.terminate, proc.kill)
            for step in steps:
                if step is not None:
                    step()
                try:
                    proc.wait(timeout=STOP_GRACE)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if proc.returncode is None:                    # interrupted while waiting (a second Ctrl-C)
                proc.kill()
                proc.wait()
            for name, t in self._readers.items():
                t.join(timeout=STOP_GRACE)
                if not t.is_alive():                       # (a pipe still being read cannot be closed safely)
                    getattr(proc, name).close()


def _pump(pipe, sink: Callable[[Any], None], end: bool) -> None:
    """Each line of a child's pipe to `sink`, then (with `end`) None when the pipe closes."""
    try:
        for raw in iter(pipe.readline, b""):
            sink(raw.decode("utf-8", "replace").rstrip("\r\n"))
    except (OSError, ValueError):                          # the pipe broke or was closed
        pass
    if end:
        sink(None)


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
        self.timeout = timeout
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._send(MAGIC + model_id.encode("ascii"))
            self._reply()                   # "ok", or the server's reason: a wrong model, "server busy", ...
        except BaseException:
            self.sock.close()
            raise

    def _send(self, body: bytes) -> int:
        try:
            return write_frame(self.sock, body)
        except TimeoutError:
            raise UserError(f"the split server took no data for {self.timeout:g} s") from None
        except OSError:                     # reset, broken pipe: the server may have said why before closing
            self._reply()
            raise UserError("the split server closed the connection") from None

    def _reply(self) -> ByteReader:
        try:
            body = read_frame(self.sock)
        except ProtocolError as e:
            raise UserError(f"split server: {e}") from None
        except TimeoutError:
            raise UserError(f"the split server did not answer within {self.timeout:g} s") from None
        except OSError as e:
            raise UserError(f"the split server closed the connection ({e.strerror or e})") from None
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
        wire = self._send(bytes([MSG_LATENT]) + stream)
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

    def latency(self) -> dict[str, dict[str, float]]:
        """Per-image milliseconds (p50, p90, p99, mean) of each part: the device's encoding, send to reply (what
        the device waits for: network and server), the server's decoding and classification as it reports them,
        and the network alone (send to reply less the server's time)."""
        parts = {"encoder": [r.encode_ms for r in self.results],
                 "send_to_reply": [r.round_trip_ms for r in self.results],
                 "server": [r.server_ms for r in self.results],
                 "network": [max(r.round_trip_ms - r.server_ms, 0.0) for r in self.results]}
        return {k: percentiles(v) for k, v in parts.items()}


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean())}


LATENCY_ROWS = (("encoder", "encoder (device: model + entropy coding)"),
                ("send_to_reply", "send to reply"),
                ("server", "server (decode + classify)"),
                ("network", "network (send to reply - server)"))


def latency_rows(latency: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """`Session.latency()` as table rows, one per part, in the order of the pipeline."""
    return [{"ms per image": label, **latency[key]} for key, label in LATENCY_ROWS if key in latency]


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
                out=None, every: int | None = None, bar: bool = False) -> Session:
    """Send every image, printing a running table (every `every` images and at the end), or, with `bar`, showing
    a progress bar on stderr (codec/progress.py) instead."""
    from codec.progress import progress

    out = out or sys.stdout
    session = Session()
    n = images.shape[0]
    every = every or max(1, n // 20)
    live = live and not bar
    if live:
        print(_live_line(None), file=out, flush=True)
    payload = 0
    with progress(total=n, desc="sending", unit="img", disable=None if bar else True) as shown:
        for i in range(n):
            result = client.classify(images[i])
            session.add(result, labels[i])
            payload += result.payload_bytes
            if live and ((i + 1) % every == 0 or i + 1 == n):
                print(_live_line(session.row()), file=out, flush=True)
            acc = f"{session.correct / session.labelled:.1%}" if session.labelled else "-"
            shown.set_postfix_str(f"acc {acc}, {payload / (i + 1):.1f} B/img", refresh=False)
            shown.update(1)
    return session

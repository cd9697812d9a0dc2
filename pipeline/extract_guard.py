"""A hard time limit on extracting one page: the parse and walk run in a child process.

lexbor's parse is C code that never yields, so no check inside the process can stop it. A
``GuardedExtractor`` keeps one persistent child (``python -m pipeline.extract_guard``) that
receives pages over a pipe and returns their nodes; a page that has no answer after
``limits.parse_timeout_s`` gets the child killed (SIGKILL), becomes
``ExtractionError("parse_timeout")``, and the next page starts a new child. A child that dies on
a page (a crash, its memory limit) makes that page a ``parse_error``. The child also arms a
kernel timer before each page (no handler: the kernel ends it) so that it cannot outlive a killed
parent by more than a few seconds.

The checks before parsing (size, the markup screen) run in the caller, bounded by the same
deadline; the child gets the page as the UTF-8 bytes lexbor parses. Messages are ``marshal`` data
behind an 8-byte length (both ends run the same interpreter; only the config, sent once, is
pickled), and nodes travel as plain tuples: several times cheaper than pickled dataclasses.
docs/bench/extraction.md has the cost per page.
"""
from __future__ import annotations

import fcntl
import marshal
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import weakref

from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.extract import ExtractionError, check_page, extract_nodes, parse_nodes, require_text
from pipeline.records import Page
from schemas.document import Document, ImageNode, Node, TextNode

_HEADER = struct.Struct("<Q")
# Address space of the child (Python, lexbor and one page's tree): a page that needs more is a
# parse_error, never a worker's memory.
CHILD_MEMORY_BYTES = 1 << 30
_GRACE_S = 0.2  # past the limit, for a walk that stops itself at parse_timeout_s to answer
_START_TIMEOUT_S = 60.0  # the child's imports, on a loaded machine
_PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size


def _pack(nodes: list[Node]) -> list:
    return [n.text if type(n) is TextNode else (n.url, n.alt, n.declared_width, n.declared_height) for n in nodes]


def _unpack(packed: list) -> list[Node]:
    return [TextNode(p) if type(p) is str else ImageNode(p[0], p[1], p[2], p[3]) for p in packed]


class GuardedExtractor:
    """``extract_document`` with a hard time limit: ``extract(page) -> Document``.

    Raises ``ExtractionError`` like ``extract_document`` (reasons ``parse_timeout`` for a page
    that overran, ``parse_error`` for one that killed the child or made lexbor raise). Without a
    ``parse_timeout_s`` it runs in this process. Not thread-safe: one per thread (a DoFn instance).
    """

    def __init__(self, cfg: ExtractConfig | None = None, limits: LimitsConfig | None = None, fork: bool = False) -> None:
        self.cfg = cfg or ExtractConfig()
        self.limits = limits or LimitsConfig()
        # fork: the child is a fork of this process (no second interpreter start and imports), for
        # single-threaded callers such as the CLI; a Beam worker has threads and starts a fresh one.
        self.fork = fork
        self.timeout_s = self.limits.parse_timeout_s or None
        self._proc: subprocess.Popen | None = None
        self._finalizer = None
        self._ready_by: float | None = None  # set while a started child has not said it is ready
        self.restarts = 0  # children started after the first (one per timeout or crash)

    # -- the child ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        """Start a child; it imports and reads the config while the caller goes on."""
        if self._proc is not None:
            self.restarts += 1
        if self.fork:
            proc = _fork_child()
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.extract_guard"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _stop, proc)
        for f in (proc.stdin, proc.stdout):
            try:  # most pages then cross in one write: no round of wake-ups per 64 KB
                fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            except OSError:
                pass  # the system's pipe-max-size is lower: smaller writes, same result
        os.set_blocking(proc.stdin.fileno(), False)  # writes wait in select, under the deadline
        backstop = 2 * self.timeout_s + 5 if self.timeout_s else 0
        self._ready_by = time.monotonic() + _START_TIMEOUT_S
        _write(proc.stdin.fileno(), pickle.dumps((self.cfg, self.limits, backstop), 5), self._ready_by)

    def _child(self) -> subprocess.Popen:
        """The child, started and ready (its imports are no page's time: a page's clock starts after)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._spawn()
            proc = self._proc
        if self._ready_by is not None:
            try:
                _read(proc.stdout.fileno(), self._ready_by)
            except (TimeoutError, EOFError) as e:
                self._kill()
                raise RuntimeError(f"the extraction process did not start ({type(e).__name__})") from None
            self._ready_by = None
        return proc

    def _replace(self) -> None:
        """Kill the child and start the next one now, so that it is ready by the next page."""
        self._kill()
        self._spawn()

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills and reaps the child once
        self._finalizer = None

    def close(self) -> None:
        self._kill()
        self._proc = None

    def __enter__(self) -> "GuardedExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one page ---------------------------------------------------------------------------------

    def extract_nodes(self, html: str, base_url: str) -> tuple[list[Node], str | None]:
        """``pipeline.extract.extract_nodes`` of one page, abandoned after ``parse_timeout_s``."""
        if self.timeout_s is None:
            return extract_nodes(html, base_url, self.cfg, self.limits)
        proc = self._child()
        deadline = time.monotonic() + self.timeout_s + _GRACE_S
        # The checks before parsing run here (linear, and the screen stops at the deadline); the
        # child gets the UTF-8 bytes that lexbor would make of the text ('ignore' as selectolax).
        try:
            data = html.encode("utf-8")  # the strict codec is faster; only lone surrogates fail it
        except UnicodeEncodeError:
            data = html.encode("utf-8", "ignore")
        check_page(html, self.limits, deadline, data)
        request = marshal.dumps((data, base_url))
        del data
        try:
            _write(proc.stdin.fileno(), request, deadline)
            reply = _read(proc.stdout.fileno(), deadline)
        except TimeoutError:
            self._replace()
            raise ExtractionError(
                "parse_timeout", f"over {self.timeout_s:g} s (its extraction process was stopped)"
            ) from None
        except (EOFError, BrokenPipeError):
            self._replace()
            code = proc.returncode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise ExtractionError("parse_error", f"the extraction process died on this page ({how})") from None
        kind = reply[0]
        if kind == "ok":
            return _unpack(reply[1]), reply[2]
        if kind == "drop":
            if reply[3]:  # the child left itself in doubt (MemoryError): a fresh one for the next page
                self._replace()
            raise ExtractionError(reply[1], reply[2])
        self._kill()
        raise RuntimeError(f"extracting {base_url} failed in the extraction process:\n{reply[1]}")

    def extract(self, page: Page) -> Document:
        """``pipeline.extract.extract_document`` of ``page``, abandoned after ``parse_timeout_s``."""
        nodes, title = self.extract_nodes(page.html, page.url)
        require_text(nodes)
        return Document(url=page.url, provenance=page.provenance, nodes=nodes, title=title)


class _Forked:
    """What the guard uses of ``Popen``'s interface, for a child made by ``os.fork``."""

    def __init__(self, pid: int, stdin, stdout) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def _fork_child() -> _Forked:
    to_child, to_us = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: serve, then leave without running the parent's exit handlers
        try:
            os.close(to_child[1])
            os.close(to_us[0])
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _serve(to_child[0], to_us[1])
        finally:
            os._exit(0)
    os.close(to_child[0])
    os.close(to_us[1])
    return _Forked(pid, os.fdopen(to_child[1], "wb", buffering=0), os.fdopen(to_us[0], "rb", buffering=0))


def _stop(proc: subprocess.Popen) -> None:
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# -- framing ----------------------------------------------------------------------------------------


def _wait(fd: int, write: bool, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    r, w, _ = select.select([] if write else [fd], [fd] if write else [], [], left)
    if not (r or w):
        raise TimeoutError


def _write(fd: int, payload: bytes, deadline: float) -> None:
    """Write a frame to the non-blocking ``fd``, waiting for room until ``deadline``."""
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            _wait(fd, True, deadline)
            continue
        view = view[n:]


def _read(fd: int, deadline: float):
    buf = bytearray()
    need = _HEADER.size
    size = None
    while True:
        while len(buf) < need:
            _wait(fd, False, deadline)
            chunk = os.read(fd, max(need - len(buf), 1 << 16))
            if not chunk:
                raise EOFError
            buf += chunk
        if size is not None:
            return marshal.loads(memoryview(buf)[_HEADER.size :])
        (size,) = _HEADER.unpack_from(buf)
        need = _HEADER.size + size


def _read_blocking(f) -> bytes | None:
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = f.read(size)
    return data if len(data) == size else None


def _serve(inp_fd: int = 0, out_fd: int | None = None) -> None:
    """The child: one page in, its nodes (or why not) out, until its input closes."""
    import resource
    import traceback

    inp = os.fdopen(inp_fd, "rb")
    out = os.fdopen(os.dup(1) if out_fd is None else out_fd, "wb")
    os.dup2(2, 1)  # stray prints go to stderr, not into the reply stream (or a forking CLI's output)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    except (ValueError, OSError):
        pass  # a lower hard limit is already set
    first = _read_blocking(inp)
    if first is None:
        return
    cfg, limits, backstop = pickle.loads(first)
    ready = marshal.dumps("ready")
    out.write(_HEADER.pack(len(ready)) + ready)
    out.flush()
    while True:
        frame = _read_blocking(inp)
        if frame is None:
            return
        html, url = marshal.loads(frame)
        del frame
        if backstop:
            signal.setitimer(signal.ITIMER_REAL, backstop)
        restart = False
        try:
            nodes, title = parse_nodes(html, url, cfg, limits)
            reply = ("ok", _pack(nodes), title)
        except ExtractionError as e:
            reply = ("drop", e.reason, e.detail, False)
        except (ValueError, UnicodeError, RecursionError) as e:  # lexbor on malformed input
            reply = ("drop", "parse_error", f"{type(e).__name__}: {e}", False)
        except MemoryError:
            nodes = title = html = None
            reply = ("drop", "parse_error", f"MemoryError: over {CHILD_MEMORY_BYTES >> 20} MB", True)
            restart = True
        except Exception:
            reply = ("fail", traceback.format_exc())
        if backstop:
            signal.setitimer(signal.ITIMER_REAL, 0)
        data = marshal.dumps(reply)
        out.write(_HEADER.pack(len(data)) + data)
        out.flush()
        if restart:
            return


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    _serve()

"""Hostile servers for URLs (issue 21): a server trickling its headers or its body byte by byte
meets a total deadline per request (a socket timeout between bytes alone never fires), and a
redirect to another server is refused before anything is asked of it. Each ends in one line on
stderr and exit 2.

The trickling server is a raw socket (an HTTP library would buffer what it sends); the redirects
come from two pytest-httpserver instances, so the server a redirect points at can show in its
own log that it was never asked.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
pytest_httpserver = pytest.importorskip("pytest_httpserver")

from werkzeug import Request, Response

import ckptui.formats.remote.fs as remote_fs
from ckptui.cli.main import main
from ckptui.formats.remote.fs import refused_redirect

MB = 1 << 20
TICK = 0.2
"""Seconds between two trickled bytes: far below the 60 s socket read timeout."""


@pytest.fixture
def small_zip(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.arange(12.0).reshape(3, 4)}, "step": 7}, path)
    return path


@pytest.fixture
def train_zip(tmp_path: Path) -> Path:
    """Weights of 2 MiB (so their read is one large GET) plus a small optimizer state."""
    path = tmp_path / "train.pth"
    torch.save({"model": {"w": torch.ones(MB // 2)}, "optimizer": {"state": {}}}, path)
    return path


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    """A 1 s deadline per request, whatever its size (the shipped one is 120 s and more)."""
    monkeypatch.setattr(remote_fs, "REQUEST_DEADLINE", 1.0)
    monkeypatch.setattr(remote_fs, "MIN_RATE", 1 << 40)
    return 1.0


class Trickler:
    """A raw HTTP/1.1 server for one file that answers HEAD at once and ranged GETs byte by
    byte (`trickle="headers"`: the status line and headers too; `"body"`: only the body;
    `"large"`: only answers of over 1 MiB, the rest at once). Counts the GETs it received."""

    def __init__(self, data: bytes, trickle: str) -> None:
        self.data, self.trickle = data, trickle
        self.gets: list[str] = []
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/ckpt.pth"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket, data: bytes, slow: bool) -> None:
        if not slow:
            conn.sendall(data)
            return
        for i in range(len(data)):
            if self.stop.is_set():
                return
            conn.sendall(data[i : i + 1])
            time.sleep(TICK)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                while not self.stop.is_set():
                    request = b""
                    while b"\r\n\r\n" not in request:
                        got = conn.recv(65536)
                        if not got:
                            return
                        request += got
                    self._one(conn, request.decode("latin-1"))
            except OSError:
                return  # the client gave up (its deadline): what the tests wait for

    def _one(self, conn: socket.socket, request: str) -> None:
        method = request.split(" ", 1)[0]
        size = len(self.data)
        if method == "HEAD":
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n"
            self._send(conn, (head + 'ETag: "v1"\r\n\r\n').encode(), self.trickle == "headers")
            return
        rng = re.search(r"Range: (bytes=\d+-\d+)", request, re.IGNORECASE)
        self.gets.append(f"GET {rng[1] if rng else 'whole'}")
        m = re.search(r"Range: bytes=(\d+)-(\d+)", request, re.IGNORECASE)
        a, b = (int(m[1]), int(m[2])) if m else (0, size - 1)
        body = self.data[a : b + 1]
        head = (
            f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
            f"Content-Range: bytes {a}-{b}/{size}\r\nAccept-Ranges: bytes\r\n\r\n"
        ).encode()
        slow = self.trickle in ("headers", "body") or (self.trickle == "large" and len(body) > MB)
        self._send(conn, head, slow and self.trickle == "headers")
        self._send(conn, body, slow)


@contextlib.contextmanager
def trickling(path: Path, trickle: str) -> Iterator[Trickler]:
    server = Trickler(path.read_bytes(), trickle)
    try:
        yield server
    finally:
        server.close()


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_server_trickling_its_headers_meets_the_deadline(
    capsys: pytest.CaptureFixture[str], short_deadline: float, small_zip: Path
) -> None:
    """HEAD's status line and headers come a byte every 200 ms, so the socket read timeout
    (60 s) never fires and the headers alone would take 20 s: the 1 s deadline ends the HEAD
    and fsspec's GET retry of it, then one line."""
    with trickling(small_zip, "headers") as server:
        start = time.monotonic()
        err = one_line_error(capsys, ["inspect", server.url])
        took = time.monotonic() - start
    assert err == (
        f"ckptui: {server.url}: the server did not finish answering one request in 1 s\n"
    )
    assert took < 4 * short_deadline, took  # HEAD, then fsspec's GET fallback: two deadlines


def test_a_server_trickling_the_body_meets_the_deadline(
    capsys: pytest.CaptureFixture[str], short_deadline: float, small_zip: Path
) -> None:
    """HEAD answers at once; the first ranged GET's body trickles: one deadline, no retry."""
    with trickling(small_zip, "body") as server:
        start = time.monotonic()
        err = one_line_error(capsys, ["inspect", "--json", server.url])
        took = time.monotonic() - start
        gets = list(server.gets)
    assert "did not finish answering one request in 1 s" in err and server.url in err, err
    assert len(gets) == 1, gets
    assert took < 3 * short_deadline, took


def test_an_export_whose_tensor_data_trickles_is_not_retried(
    capsys: pytest.CaptureFixture[str], short_deadline: float, train_zip: Path, tmp_path: Path
) -> None:
    """Opening reads only small ranges (served at once); the export's 2 MiB read of the
    weights trickles: it stops at its deadline, is not tried again (another whole deadline),
    and no output or temp file is left."""
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    with trickling(train_zip, "large") as server:
        start = time.monotonic()
        err = one_line_error(capsys, ["export", server.url, "-o", str(out)])
        took = time.monotonic() - start
        large = [g for g in server.gets if _range_len(g) > MB]
    assert "did not finish answering one request in 1 s" in err, err
    assert "attempts" not in err
    assert len(large) == 1, server.gets
    assert took < 4 * short_deadline, took
    assert list(out.parent.iterdir()) == []


def _range_len(get_line: str) -> int:
    m = re.search(r"bytes=(\d+)-(\d+)", get_line)
    return 0 if m is None else int(m[2]) - int(m[1]) + 1


def test_the_three_timeouts_are_told_apart() -> None:
    import asyncio

    import aiohttp

    from ckptui.core.errors import TimedOut
    from ckptui.formats.remote.fs import translate

    e = translate("u", asyncio.TimeoutError(), 16 * MB)  # aiohttp's total
    assert isinstance(e, TimedOut)
    assert e.message == "the server did not finish answering one request in 376 s"
    assert translate("u", aiohttp.SocketTimeoutError()).message == (
        "the server sent nothing for 60 s"
    )
    assert translate("u", aiohttp.ConnectionTimeoutError()).message == (
        "cannot reach the server (no connection in 10 s)"
    )


def test_the_shipped_deadline_grows_with_the_answer() -> None:
    assert remote_fs.deadline(0) == remote_fs.REQUEST_DEADLINE == 120.0
    assert remote_fs.deadline(16 * MB) == 120.0 + 256.0  # 16 MiB at the slowest rate allowed
    assert remote_fs.READ_TIMEOUT < remote_fs.REQUEST_DEADLINE


# --- redirects ----------------------------------------------------------------------------------


@pytest.fixture
def other_server() -> Iterator[pytest_httpserver.HTTPServer]:
    """A second local server, named `127.0.0.1` where `httpserver` is named `localhost`."""
    server = pytest_httpserver.HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


def _serve_file(server: pytest_httpserver.HTTPServer, name: str, data: bytes) -> str:
    def handler(request: Request) -> Response:
        resp = Response(data, content_type="application/octet-stream")
        resp.headers["ETag"] = '"v1"'
        resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
        return resp

    server.expect_request(f"/{name}").respond_with_handler(handler)
    return server.url_for(f"/{name}")


def _redirect(server: pytest_httpserver.HTTPServer, name: str, location: str, **kw: str) -> str:
    server.expect_request(f"/{name}", **kw).respond_with_response(
        Response(status=302, headers={"Location": location})
    )
    return server.url_for(f"/{name}")


def test_a_redirect_to_another_server_is_refused_and_that_server_never_asked(
    httpserver: pytest_httpserver.HTTPServer,
    other_server: pytest_httpserver.HTTPServer,
    capsys: pytest.CaptureFixture[str],
    small_zip: Path,
) -> None:
    target = _serve_file(other_server, "ckpt.pth", small_zip.read_bytes())
    url = _redirect(httpserver, "ckpt.pth", target + "?X-Amz-Signature=secret")
    assert url.startswith("http://localhost:") and target.startswith("http://127.0.0.1:")
    err = one_line_error(capsys, ["inspect", "--json", url])
    assert err == f"ckptui: {url}: refused a redirect to another host: {target}\n"
    assert "secret" not in err  # a signed query is not printed
    assert other_server.log == []  # refused before a single request reached it


def test_a_redirect_to_another_port_is_refused_in_every_command(
    httpserver: pytest_httpserver.HTTPServer,
    other_server: pytest_httpserver.HTTPServer,
    capsys: pytest.CaptureFixture[str],
    small_zip: Path,
    tmp_path: Path,
) -> None:
    """Another port on the same host name is another server."""
    _serve_file(other_server, "b.pth", small_zip.read_bytes())
    target = f"http://localhost:{other_server.port}/b.pth"
    url = _redirect(httpserver, "a.pth", target)
    out = tmp_path / "w.pth"
    for cmd in (
        ["inspect", url],
        ["why", url],
        ["diff", url, url],
        ["export", url, "-o", str(out)],
    ):
        err = one_line_error(capsys, cmd)
        assert err == f"ckptui: {url}: refused a redirect to another port: {target}\n", cmd
    assert other_server.log == []
    assert not out.exists()


def test_a_redirect_of_a_range_read_to_another_server_is_refused(
    httpserver: pytest_httpserver.HTTPServer,
    other_server: pytest_httpserver.HTTPServer,
    capsys: pytest.CaptureFixture[str],
    small_zip: Path,
    tmp_path: Path,
) -> None:
    """HEAD is answered; each GET (a range) redirects elsewhere, as a CDN hand-off would."""
    data = small_zip.read_bytes()
    target = _serve_file(other_server, "ckpt.pth", data)
    httpserver.expect_request("/ckpt.pth", method="HEAD").respond_with_response(
        Response(b"", headers={"Content-Length": str(len(data)), "Accept-Ranges": "bytes"})
    )
    url = _redirect(httpserver, "ckpt.pth", target, method="GET")
    out = tmp_path / "w.pth"
    err = one_line_error(capsys, ["export", url, "-o", str(out)])
    assert err == f"ckptui: {url}: refused a redirect to another host: {target}\n"
    assert "attempts" not in err  # refused once, not tried again
    assert other_server.log == []
    assert not out.exists()


def test_a_redirect_on_the_same_server_is_followed(
    httpserver: pytest_httpserver.HTTPServer,
    capsys: pytest.CaptureFixture[str],
    small_zip: Path,
) -> None:
    import json

    target = _serve_file(httpserver, "v2/ckpt.pth", small_zip.read_bytes())
    url = _redirect(httpserver, "latest/ckpt.pth", "/v2/ckpt.pth")
    capsys.readouterr()
    assert main(["inspect", "--json", url]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main(["inspect", "--json", str(small_zip)]) == 0
    local = json.loads(capsys.readouterr().out)
    drop = ("path", "bytes_read")
    assert {k: v for k, v in remote.items() if k not in drop} == {
        k: v for k, v in local.items() if k not in drop
    }
    assert target.endswith("/v2/ckpt.pth")
    assert {req.path for req, _ in httpserver.log} == {"/latest/ckpt.pth", "/v2/ckpt.pth"}


@pytest.mark.parametrize(
    ("here", "there", "why"),
    [
        ("http://h:8000/a", "http://h:8000/b", None),
        ("http://H:8000/a", "http://h:8000/b?x=1", None),  # host names ignore case
        ("http://h/a", "https://h/a", None),  # the upgrade to https on the default ports
        ("https://h/a", "https://h:443/b", None),
        ("http://h:8000/a", "http://h:8001/a", "another port"),
        ("http://h/a", "http://g/a", "another host"),
        ("https://h/a", "http://h/a", "plain http"),
        ("http://h/a", "file:///etc/passwd", "a URL that is not http(s)"),
        ("http://h/a", "http://h:99999999/a", "another port"),
        # the Hub's resolve/ URLs redirect to its own CDN: followed (a user passes the Hub URL)
        ("https://huggingface.co/m/resolve/main/w", "https://cdn-lfs.hf.co/x", None),
        ("https://huggingface.co/m/resolve/main/w", "https://cas-bridge.xethub.hf.co/x", None),
        ("https://huggingface.co/m/resolve/main/w", "http://cdn-lfs.hf.co/x", "plain http"),
        ("https://huggingface.co/m/resolve/main/w", "https://evil.example/x", "another host"),
        ("https://huggingface.co/m/resolve/main/w", "https://nothf.co/x", "another host"),
        ("https://h.example/a", "https://cdn.h.example/a", None),  # a subdomain: same owner
        ("https://h.example/a", "https://evilh.example/a", "another host"),  # not a subdomain
        ("https://cdn.h.example/a", "https://h.example/a", "another host"),  # not upward
    ],
)
def test_which_redirects_stay_on_the_server(here: str, there: str, why: str | None) -> None:
    assert refused_redirect(here, there) == why

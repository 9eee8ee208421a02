"""A trickling S3 endpoint meets the same total deadline per request as HTTP (issue 21).

botocore's `read_timeout` bounds only the wait between two bytes, so an S3 server sending a
byte every few seconds held a `ckptui inspect s3://...` forever. Each request of an S3 file
(its HEAD, every range GET, a folder's listing) now runs under a wall-clock deadline
(`remote.fs.bounded`) and ends in the HTTP one's line: exit 2, `TimedOut`, no retry.

The endpoint is `test_remote_hostile.Trickler`, a raw-socket HTTP/1.1 server: S3's HEAD and
ranged GET of an object are plain HTTP, and a raw socket sends each byte when told (moto, behind
werkzeug, would buffer the answer). s3fs and aiobotocore find it through `AWS_ENDPOINT_URL_S3`,
as they would MinIO, so their real code paths (signing, retries, parsing) run.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fsspec")
pytest.importorskip("s3fs")

from fsspec.asyn import AsyncFileSystem
from fsspec.exceptions import FSTimeoutError

from ckptui.core.errors import NotReadable, TimedOut
from ckptui.formats.remote import fs as remote_fs
from ckptui.formats.remote.fs import bounded, filesystem, needs_deadline, translate

from . import test_remote_hostile as hostile
from .s3_server import REGION, clear_s3fs_cache, isolate_aws_env
from .test_remote_hostile import MB, Trickler, one_line_error

# the HTTP tests' files
small_zip, train_zip = hostile.small_zip, hostile.train_zip

DEADLINE = 2.0
"""The tests' deadline per request: 2 s, not the HTTP tests' 1 s. An S3 client's first request
(botocore building its client and service model) took over 1 s on a loaded 2-core machine, so
the HEAD that should have been served at once timed out instead. The trickled answers take
3.2 s or more, so 2 s still ends each of them."""


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    """`DEADLINE` per request, whatever its size (the shipped one is 120 s and more)."""
    monkeypatch.setattr(remote_fs, "REQUEST_DEADLINE", DEADLINE)
    monkeypatch.setattr(remote_fs, "MIN_RATE", 1 << 40)
    return DEADLINE


TIMED_OUT = f"the server did not finish answering one request in {DEADLINE:g} s"

_BUCKETS = itertools.count()


@pytest.fixture
def s3_trickler(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[Path, str], tuple[Trickler, str]]]:
    """Start a Trickler for a file and point S3 clients at it; returns the object's s3:// URL
    (a bucket of its own, so no metadata cached by an earlier test is reused)."""
    servers: list[Trickler] = []
    isolate_aws_env(monkeypatch, tmp_path_factory.mktemp("home"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    def start(path: Path, trickle: str) -> tuple[Trickler, str]:
        server = Trickler(path.read_bytes(), trickle)
        servers.append(server)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.url.rsplit("/", 1)[0])
        clear_s3fs_cache()
        return server, f"s3://trickle-{next(_BUCKETS)}/ckpt.pth"

    yield start
    for server in servers:
        server.close()
    clear_s3fs_cache()


def test_an_s3_head_that_trickles_meets_the_deadline(
    capsys: pytest.CaptureFixture[str], short_deadline: float, small_zip: Path, s3_trickler
) -> None:
    """HEAD's status line and headers come a byte every 200 ms (about 20 s in all; botocore's
    60 s read timeout never fires): the deadline ends the stat, s3fs's retries included."""
    server, url = s3_trickler(small_zip, "headers")
    start = time.monotonic()
    err = one_line_error(capsys, ["inspect", url])
    took = time.monotonic() - start
    assert err == f"ckptui: {url}: {TIMED_OUT}\n"
    assert server.gets == []  # it never got past the HEAD
    assert took < 4 * short_deadline, took


def test_an_s3_range_read_that_trickles_meets_the_deadline(
    capsys: pytest.CaptureFixture[str], short_deadline: float, small_zip: Path, s3_trickler
) -> None:
    """HEAD answers at once; the first ranged GET's body trickles (16 bytes, 3.2 s): one
    deadline, one GET (neither s3fs nor ckptui tries again)."""
    server, url = s3_trickler(small_zip, "body")
    start = time.monotonic()
    err = one_line_error(capsys, ["inspect", "--json", url])
    took = time.monotonic() - start
    assert err == f"ckptui: {url}: {TIMED_OUT}\n"
    assert server.gets == ["GET bytes=0-15"]
    assert took < 3 * short_deadline, took


def test_an_s3_export_whose_tensor_data_trickles_is_not_retried(
    capsys: pytest.CaptureFixture[str],
    short_deadline: float,
    train_zip: Path,
    s3_trickler,
    tmp_path: Path,
) -> None:
    """Opening reads small ranges (served at once); the export's 2 MiB read of the weights
    trickles: one deadline, not tried again, no output or temp file left."""
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    server, url = s3_trickler(train_zip, "large")
    start = time.monotonic()
    err = one_line_error(capsys, ["export", url, "-o", str(out)])
    took = time.monotonic() - start
    large = [g for g in server.gets if _range_len(g) > MB]
    assert TIMED_OUT in err and url in err, err
    assert "attempts" not in err
    assert len(large) == 1, server.gets
    assert took < 4 * short_deadline, took
    assert list(out.parent.iterdir()) == []


def test_an_s3_file_served_at_once_still_opens(
    capsys: pytest.CaptureFixture[str], short_deadline: float, small_zip: Path, s3_trickler
) -> None:
    """The same endpoint answering at once: the deadline costs nothing, every read is one
    exact range GET (`cat_file`, as the file's own read did)."""
    server, url = s3_trickler(small_zip, "none")
    capsys.readouterr()
    from ckptui.cli.main import main

    assert main(["inspect", "--json", url]) == 0, capsys.readouterr().err
    assert '"w"' in capsys.readouterr().out
    assert server.gets and all(g.startswith("GET bytes=") for g in server.gets), server.gets


def _range_len(get_line: str) -> int:
    m = re.search(r"bytes=(\d+)-(\d+)", get_line)
    return 0 if m is None else int(m[2]) - int(m[1]) + 1


class _Stalled(AsyncFileSystem):
    """An async back-end whose every call waits for ever, as a stalled server would."""

    protocol = ("stalled",)

    async def _find(self, path: str, **kwargs: object) -> dict:
        await asyncio.sleep(3600)
        return {}

    async def _info(self, path: str, **kwargs: object) -> dict:
        await asyncio.sleep(3600)
        return {}


def test_bounded_ends_any_async_call_and_leaves_http_to_aiohttp(short_deadline: float) -> None:
    """A folder's listing (`find`) and a stat are bounded too; HTTP keeps aiohttp's own total
    timeout per request, and a synchronous back-end has no loop to bound."""
    fs = _Stalled(skip_instance_cache=True)
    for method in ("find", "info"):
        start = time.monotonic()
        with pytest.raises(FSTimeoutError) as caught:
            bounded(fs, method, "stalled://x")
        assert time.monotonic() - start < 3 * short_deadline
        got = translate("stalled://x", caught.value)
        assert isinstance(got, TimedOut)
        assert got.message == TIMED_OUT
    http, _ = filesystem("https://example.invalid/a.pth")
    memory, _ = filesystem("memory://ckptui-deadline/a.pth")
    assert not needs_deadline(http)
    assert not needs_deadline(memory)
    assert needs_deadline(fs)


def test_botocores_read_timeout_is_told_as_silence() -> None:
    """botocore's read_timeout (no byte for 60 s) reads as aiohttp's sock_read does, not as an
    unreachable server."""
    from botocore.exceptions import ReadTimeoutError

    got = translate("s3://b/k", ReadTimeoutError(endpoint_url="http://127.0.0.1:9"))
    assert isinstance(got, NotReadable)
    assert got.message == "the server sent nothing for 60 s"

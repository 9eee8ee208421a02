"""Provides what reading a URL needs besides the bytes themselves: the fsspec filesystem with
bounded timeouts and a total deadline per request (`filesystem`, `set_deadline`, `bounded`,
`fetch_range`), the refusal of a redirect to another server, one-line errors for whatever a
back-end raises (`translate`), and the cache of metadata already fetched (`remembered` /
`remember`).

fsspec and its back-ends are imported here only when a URL is opened: local files never pay.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urljoin, urlsplit

from ckptui.core.errors import CkptError, NotFound, NotReadable, Redirected, TimedOut, Unsupported

CONNECT_TIMEOUT = 10.0
"""Seconds to connect to a server (HTTP, and S3 through botocore)."""
READ_TIMEOUT = 60.0
"""Seconds a read may wait for the next bytes from the server (HTTP, and S3 through botocore)."""
REQUEST_DEADLINE = 120.0
"""Seconds one request (HTTP, S3, ...) may take in all, from connecting to the last byte of the
answer: READ_TIMEOUT bounds only the wait between two bytes, so a server trickling its headers
or body a byte a minute held a read forever (issue 21)."""
MIN_RATE = 64 << 10
"""Bytes per second a large answer must average: its deadline grows by its size over this rate
(a 16 MiB read of tensor data may take REQUEST_DEADLINE + 256 s)."""
ATTEMPTS = 3
"""Tries per tensor-data range (`read_range`) before a dropped connection is an error."""
RANGE_HELP = (
    "the server does not support HTTP range requests; reading this checkpoint would need a "
    "full download"
)


_METADATA: OrderedDict[tuple[Any, ...], tuple[float, list[tuple[int, bytes]]]] = OrderedDict()
"""What each recently closed remote file fetched (its directory, pickles, headers), by URL, size
and ETag or modification time: the reports computed after opening (`weights_only` re-reads the
pickle, an export re-reads the directory) then cost no transfer. Bounded by METADATA_BUDGET
bytes and METADATA_TTL seconds."""
METADATA_BUDGET = 64 << 20
_METADATA_LOCK = threading.Lock()
METADATA_TTL = 300.0


def version_of(url: str, size: int, details: dict[str, Any]) -> tuple[Any, ...] | None:
    """What identifies one version of a remote file (URL, size, ETag or modification time), or
    None when the server names no version: then nothing is cached, as a changed file could not
    be told from the one cached."""
    keys = ("ETag", "etag", "LastModified", "last_modified", "Last-Modified", "mtime")
    tag = next((details[k] for k in keys if details.get(k) is not None), None)
    return None if tag is None else (url, size, str(tag))


def remembered(version: tuple[Any, ...] | None) -> list[tuple[int, bytes]]:
    with _METADATA_LOCK:
        entry = _METADATA.get(version) if version is not None else None
    if entry is None or time.monotonic() - entry[0] > METADATA_TTL:
        return []
    return list(entry[1])


def remember(version: tuple[Any, ...], spans: list[tuple[int, bytes]]) -> None:
    with _METADATA_LOCK:  # shards of one model are opened on several threads
        _METADATA.pop(version, None)
        _METADATA[version] = (time.monotonic(), list(spans))
        total = sum(len(d) for _, entry in _METADATA.values() for _, d in entry)
        while total > METADATA_BUDGET and len(_METADATA) > 1:
            _, (_, old) = _METADATA.popitem(last=False)
            total -= sum(len(d) for _, d in old)


def is_http(url: str) -> bool:
    """An `http(s)://` URL: no listing, range support to be found out."""
    return url.split("://", 1)[0].lower() in ("http", "https")


def deadline(nbytes: int = 0) -> float:
    """Seconds a request answered with `nbytes` bytes may take in all (`REQUEST_DEADLINE`)."""
    return REQUEST_DEADLINE + nbytes / MIN_RATE


def _timeout(nbytes: int) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(
        total=deadline(nbytes), sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
    )


def set_deadline(file: Any, nbytes: int) -> None:
    """Give the next request of `file` the deadline of an answer of `nbytes` bytes: fsspec's
    HTTP file passes its `kwargs` to every request (`filesystem` put a `timeout` there); other
    back-ends' files have none and are left alone."""
    kwargs = getattr(file, "kwargs", None)
    if isinstance(kwargs, dict) and "timeout" in kwargs:
        kwargs["timeout"] = _timeout(nbytes)


def needs_deadline(fs: Any) -> bool:
    """Whether requests of `fs` need the wall-clock deadline of `bounded`: an async back-end
    other than HTTP. S3's client (botocore) bounds only the wait between two bytes and takes no
    total timeout, so a server trickling a byte every 50 s held a read forever (issue 21); HTTP
    has aiohttp's total timeout per request instead (`set_deadline`), which `bounded` leaves
    alone. Synchronous back-ends (`memory://`, ...) have no event loop to bound."""
    if not getattr(fs, "async_impl", False) or getattr(fs, "loop", None) is None:
        return False
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return not {"http", "https"} & set(protocols)


def bounded(fs: Any, method: str, *args: Any, nbytes: int = 0, **kwargs: Any) -> Any:
    """`fs.<method>(*args, **kwargs)` (`info`, `cat_file`, `find`, ...), ended by its deadline
    (`deadline(nbytes)`) where the back-end has none of its own (`needs_deadline`): the method's
    coroutine runs on fsspec's event loop under `asyncio.wait_for`, which cancels it (closing
    its connection, s3fs's own retries included) and raises fsspec's `FSTimeoutError`, which
    `translate` turns into `TimedOut`."""
    if not needs_deadline(fs):
        return getattr(fs, method)(*args, **kwargs)
    # fsspec is imported only once a URL is opened (local files never pay for it)
    from fsspec.asyn import sync

    # the coroutine itself (fsspec's async API is the method's name with "_"), not the sync
    # wrapper, which a back-end may override with one that takes no timeout
    coro = getattr(fs, "_" + method)
    return sync(fs.loop, coro, *args, timeout=deadline(nbytes), **kwargs)


def fetch_range(file: Any, offset: int, n: int) -> bytes:
    """The bytes [offset, offset + n) of the open fsspec `file`, in one request that ends by
    its deadline (`deadline(n)`): over HTTP the file's own request with aiohttp's total timeout
    (`set_deadline`); on S3 and other async back-ends one `cat_file` range under `bounded`
    (the file's read would call the back-end with no deadline at all)."""
    fs = getattr(file, "fs", None)
    if n > 0 and needs_deadline(fs):
        version = getattr(file, "version_id", None)  # a versioned S3 object: that version
        kw = {"version_id": version} if version else {}
        return bounded(fs, "cat_file", file.path, start=offset, end=offset + n, nbytes=n, **kw)
    set_deadline(file, n)  # a large answer may take longer, a trickle not forever
    file.seek(offset)
    return file.read(n)


def _server(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`, the port filled in for http and https."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a Location with a port that is no number: no server to compare
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


_SAME_OWNER = {"huggingface.co": ("huggingface.co", "hf.co")}
"""Hosts whose files live on their owner's other domains: the Hub's `resolve/` URLs redirect
every weights file to its CDN (`cdn-lfs.hf.co`, `cas-bridge.xethub.hf.co`)."""


def _same_owner(named: str, target: str) -> bool:
    """`target` is `named`, a subdomain of it, or one of its owner's domains (`_SAME_OWNER`)."""
    roots = _SAME_OWNER.get(named, (named,))
    return any(target == r or target.endswith("." + r) for r in roots)


def refused_redirect(here: str, there: str) -> str | None:
    """Why a redirect from `here` to `there` is refused, or None when it stays with the server's
    owner: the same host (or a subdomain of it, or for the Hugging Face Hub its CDN domains)
    and port, or http to https on the default ports. Another host would have ckptui read a file
    from a server the user never named (and send it the URL's query)."""
    (s1, h1, p1), (s2, h2, p2) = _server(here), _server(there)
    if s2 not in ("http", "https"):
        return "a URL that is not http(s)"
    if not _same_owner(h1, h2):
        return "another host"
    if s1 == "https" and s2 == "http":
        return "plain http"
    if p1 != p2 and (s1, p1, s2, p2) != ("http", 80, "https", 443):
        return "another port"
    return None


_GUARD: list[Any] = []
"""The one aiohttp TraceConfig refusing redirects: one object, so that fsspec's cache of
filesystems (keyed by their options) keeps reusing one filesystem."""


def _redirect_guard() -> Any:
    if not _GUARD:
        import aiohttp

        async def on_redirect(_session: Any, _ctx: Any, params: Any) -> None:
            # Called with the 3xx answer, before aiohttp follows it: raising stops it there.
            location = params.response.headers.get("Location")
            if location is None:
                return
            here = str(params.url)
            there = urljoin(here, location)
            why = refused_redirect(here, there)
            if why is not None:
                parts = urlsplit(there)  # the query may hold a signature: not printed
                shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
                raise Redirected(here, f"refused a redirect to {why}: {shown}")

        guard = aiohttp.TraceConfig()
        guard.on_request_redirect.append(on_redirect)
        _GUARD.append(guard)
    return _GUARD[0]


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for `url`, with bounded timeouts where the back-end takes them;
    over HTTP also a total deadline per request and no redirect to another server."""
    try:
        import fsspec
    except ImportError:
        raise Unsupported(
            url, "reading URLs needs the remote extra: pip install 'ckptui[remote]'"
        ) from None
    options: dict[str, Any] = {}
    if is_http(url):
        try:
            import aiohttp
        except ImportError:
            raise Unsupported(
                url, "reading http(s) URLs needs aiohttp: pip install 'ckptui[remote]'"
            ) from None
        options["client_kwargs"] = {
            "timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            ),
            "trace_configs": [_redirect_guard()],
        }
        options["timeout"] = _timeout(0)  # per request: fsspec passes it to every HEAD and GET
    elif url.split("://", 1)[0].lower() in ("s3", "s3a"):
        # botocore's defaults: 60 s to connect and 5 tries, so a dead endpoint took minutes
        options["config_kwargs"] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
            "retries": {"max_attempts": ATTEMPTS},
        }
    try:
        return fsspec.core.url_to_fs(url, **options)
    except Exception as e:  # noqa: BLE001 - unknown protocols, bad options: one CkptError line
        raise translate(url, e) from None


_NO_CREDENTIALS = (
    "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
)


def _status(e: BaseException) -> tuple[int | None, str]:
    """The HTTP status and the server's error code (S3's `NoSuchBucket`, ...), if any."""
    status = getattr(e, "status", None)
    response = getattr(e, "response", None)  # botocore's ClientError (s3fs)
    if isinstance(response, dict):
        status = status or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, str(response.get("Error", {}).get("Code", ""))
    return status, ""


def translate(url: str, e: BaseException, nbytes: int = 0) -> CkptError:
    """One-line `CkptError` for whatever fsspec or its back-end raised (`nbytes`: the size of
    the answer the request asked for, which sets its deadline)."""
    if isinstance(e, CkptError):
        return e
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        # fsspec's HTTP info() and s3fs hide the cause here
        return translate(url, e.__cause__, nbytes)
    status, code = _status(e)
    name = type(e).__name__
    if code == "NoSuchBucket":
        return NotFound(url, "the bucket does not exist (404)")
    if isinstance(e, FileNotFoundError) or status == 404:
        return NotFound(url, "not found on the server (404)")
    if isinstance(e, PermissionError) or status in (401, 403):
        return NotReadable(url, "access denied (401/403, or credentials missing)")
    if name in ("NoCredentialsError", "PartialCredentialsError"):  # botocore
        return NotReadable(url, _NO_CREDENTIALS)
    if isinstance(status, int):
        return NotReadable(url, f"the server answered HTTP {status} {getattr(e, 'message', '')}")
    if name in ("ClientPayloadError", "ServerDisconnectedError"):  # aiohttp
        return NotReadable(url, f"the connection dropped mid-transfer ({name})")
    if name == "ReadTimeoutError":  # botocore's read_timeout, the S3 twin of aiohttp's sock_read
        return NotReadable(url, f"the server sent nothing for {READ_TIMEOUT:g} s")
    if name in ("EndpointConnectionError", "ConnectTimeoutError"):  # botocore
        return NotReadable(url, f"cannot reach the server ({e})")
    if isinstance(e, ValueError) and "range" in str(e).lower():
        return Unsupported(url, RANGE_HELP)
    if name == "ConnectionTimeoutError":  # aiohttp's sock_connect
        return NotReadable(url, f"cannot reach the server (no connection in {CONNECT_TIMEOUT:g} s)")
    # asyncio.TimeoutError is no builtin TimeoutError before Python 3.11: matched by name too
    # (and fsspec's FSTimeoutError, `bounded`'s deadline, subclasses it)
    timed_out = isinstance(e, TimeoutError) or name in ("TimeoutError", "FSTimeoutError")
    if timed_out and name in ("ServerTimeoutError", "SocketTimeoutError"):
        return NotReadable(url, f"the server sent nothing for {READ_TIMEOUT:g} s")
    if timed_out:  # aiohttp's total or `bounded`'s: the request's deadline passed
        return TimedOut(
            url, f"the server did not finish answering one request in {deadline(nbytes):g} s"
        )
    if isinstance(e, ImportError):
        return Unsupported(url, f"this kind of URL needs a package that is not installed ({e})")
    if isinstance(e, OSError):
        return NotReadable(url, f"cannot reach the server ({e})")
    return NotReadable(url, f"remote read failed ({name}: {e})")

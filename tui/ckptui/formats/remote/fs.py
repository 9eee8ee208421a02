"""Provides what reading a URL needs besides the bytes themselves: the fsspec filesystem with
bounded timeouts (`filesystem`), one-line errors for whatever a back-end raises (`translate`), and
the cache of metadata already fetched (`remembered` / `remember`).

fsspec and its back-ends are imported here only when a URL is opened: local files never pay.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from ckptui.core.errors import CkptError, NotFound, NotReadable, Unsupported

CONNECT_TIMEOUT = 10.0
"""Seconds to connect to a server (HTTP)."""
READ_TIMEOUT = 60.0
"""Seconds a read may wait for the next bytes from the server (HTTP)."""
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


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for `url`, with bounded timeouts where the back-end takes them."""
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
            )
        }
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


def translate(url: str, e: BaseException) -> CkptError:
    """One-line `CkptError` for whatever fsspec or its back-end raised."""
    if isinstance(e, CkptError):
        return e
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        return translate(url, e.__cause__)  # fsspec's HTTP info() and s3fs hide the cause here
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
    if name in ("EndpointConnectionError", "ConnectTimeoutError"):  # botocore
        return NotReadable(url, f"cannot reach the server ({e})")
    if isinstance(e, ValueError) and "range" in str(e).lower():
        return Unsupported(url, RANGE_HELP)
    if isinstance(e, TimeoutError):
        return NotReadable(url, f"the server did not answer within {READ_TIMEOUT:g} s")
    if isinstance(e, ImportError):
        return Unsupported(url, f"this kind of URL needs a package that is not installed ({e})")
    if isinstance(e, OSError):
        return NotReadable(url, f"cannot reach the server ({e})")
    return NotReadable(url, f"remote read failed ({name}: {e})")

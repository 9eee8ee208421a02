"""A real S3 endpoint on 127.0.0.1 for the remote-checkpoint tests: moto's server mode, as s3fs's
own test suite uses, behind a WSGI middleware that logs what the server sent.

moto's `ThreadedMotoServer` builds its WSGI app inside its thread and gives no way to wrap it, so
`S3Server` runs the same pieces itself (werkzeug's `make_server` with moto's
`DomainDispatcherApplication` and `MotoRequestHandler`, threaded), with `_Recorder` in front of
the app. Every request's method, path, Range header, status and the number of body bytes the
server actually yielded are recorded, so the tests assert what the *server* served, not only
ckptui's own count.

Clients find the endpoint the way a user of MinIO, R2 or any S3-compatible store would point
ckptui at theirs: `AWS_ENDPOINT_URL_S3`, which botocore (so boto3, aiobotocore and s3fs, so the
in-process `ckptui` CLI) reads when a client is made. `s3_env` sets it with fake credentials and
isolates the test from any real AWS configuration (config files, profiles, the EC2 metadata
service), so nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"
_ENV_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "FSSPEC_S3",
    "FSSPEC_S3_ENDPOINT_URL",
)


@dataclass
class Served:
    """One request as the server answered it."""

    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0
    """Body bytes handed to the server to send (0 for HEAD), counted before each is sent."""


class _Recorder:
    """WSGI middleware: appends a `Served` to `log` for each request as it arrives, and counts
    each body chunk before handing it to the server to send, so by the time a client has
    received a response, its record is complete (a record written after the body would race
    the client's next step)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], log: list[Served]) -> None:
        self.app = app
        self.log = log
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        rec = Served(
            environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("HTTP_RANGE")
        )
        with self.lock:
            self.log.append(rec)

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            rec.status = int(status.split(None, 1)[0])
            return start_response(status, headers, exc_info)

        return self._body(self.app(environ, recording_start_response), rec)

    @staticmethod
    def _body(body: Iterable[bytes], rec: Served) -> Iterator[bytes]:
        try:
            for chunk in body:
                rec.sent += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


class S3Server:
    """moto's S3 in server mode on 127.0.0.1 at a free port, logging every response."""

    def __init__(self) -> None:
        self.log: list[Served] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._buckets = itertools.count()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> S3Server:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        app = _Recorder(DomainDispatcherApplication(create_backend_app), self.log)
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reset(self) -> None:
        """Forget every bucket (moto's own reset endpoint) and the log."""
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass
        self.log.clear()

    @contextlib.contextmanager
    def iam_auth(self) -> Iterator[None]:
        """moto's IAM mode while inside: every request's signature and permissions are checked
        against moto's IAM, which knows no access key, so any credentials get 403
        (InvalidAccessKeyId), as a wrong key does on AWS. The server runs in this process, so
        this sets what `moto.core.set_initial_no_auth_action_count(0)` and the
        INITIAL_NO_AUTH_ACTION_COUNT variable set."""
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        before = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        ActionAuthenticatorMixin.request_count = 0
        try:
            yield
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = before

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint (for uploads and bucket setup)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        """A new, empty bucket. Every test gets its own name, so no URL is reused across tests
        (ckptui remembers a file's metadata by URL, size and ETag)."""
        name = f"ckpts-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, bucket: str, key: str, path: Path) -> str:
        self.client().upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{key}"

    def upload_folder(self, bucket: str, prefix: str, folder: Path) -> str:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                self.upload(bucket, f"{prefix}/{f.name}", f)
        return f"s3://{bucket}/{prefix}/"

    def since(self, mark: int = 0) -> list[Served]:
        return self.log[mark:]

    def sent(self, mark: int = 0, path: str | None = None) -> int:
        """Body bytes of every GET logged after `mark` (to `path` only, if given)."""
        return sum(
            r.sent
            for r in self.log[mark:]
            if r.method == "GET" and (path is None or r.path == path)
        )


def isolate_aws_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """No AWS setting of the machine running the tests applies: no credentials, no config, no
    profile, no endpoint, no EC2 metadata lookup (which would try 169.254.169.254)."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_") or name in _ENV_CLEARED:
            monkeypatch.delenv(name, raising=False)
    home.mkdir(parents=True, exist_ok=True)
    empty = home / "empty"
    empty.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    clear_s3fs_cache()


def use_endpoint(
    monkeypatch: pytest.MonkeyPatch,
    server: S3Server,
    home: Path,
    key: str | None = ACCESS_KEY,
    secret: str | None = SECRET_KEY,
) -> None:
    """Point every S3 client made from now on at `server`, with these credentials (none when
    `key` is None)."""
    isolate_aws_env(monkeypatch, home)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    if key is not None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret or "")


def clear_s3fs_cache() -> None:
    """s3fs caches filesystem instances (with the endpoint and credentials they were made
    with); a test that changes either must not get the last test's instance."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()

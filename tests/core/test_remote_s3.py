"""Remote checkpoints on S3 (issue 9): real torch.save, legacy, safetensors and sharded files
uploaded to moto's S3 in server mode on 127.0.0.1 and read through `s3://` URLs.

The endpoint is a real HTTP server (`s3_server.S3Server`), found through `AWS_ENDPOINT_URL_S3` as
any S3-compatible store is, so s3fs, aiobotocore and ckptui run their real code paths, and the
in-process CLI (`main([...])`) sees it too. The server's own log of body bytes sent is what the
byte-count assertions use, beside ckptui's `bytes_read`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


from ckptui.cli.main import main

from .s3_server import S3Server, clear_s3fs_cache, use_endpoint

# the same files as over HTTP
from .test_remote import big_legacy, big_safetensors  # noqa: F401

MB = 1 << 20


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


class S3:
    """One test's view of the server: its own bucket, with the environment pointing at it."""

    def __init__(self, server: S3Server, bucket: str) -> None:
        self.server = server
        self.bucket = bucket

    def put(self, path: Path, key: str | None = None) -> str:
        """Upload `path`; its s3:// URL. The log starts after the upload."""
        url = self.server.upload(self.bucket, key or path.name, path)
        self.server.log.clear()
        return url

    def sent(self, mark: int = 0) -> int:
        return self.server.sent(mark)

    def gets(self, mark: int = 0) -> list:
        return [r for r in self.server.since(mark) if r.method == "GET"]


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> S3:
    use_endpoint(monkeypatch, s3_server, tmp_path_factory.mktemp("home"))
    s3_server.reset()
    return S3(s3_server, s3_server.new_bucket())


def _inspect_json(capsys, target: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", "--json", target]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _without(doc: dict, *keys: str) -> dict:
    return {k: v for k, v in doc.items() if k not in keys}


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ckptui: ") and not captured.out, captured
    return err


# --- files ---


@pytest.fixture
def big_zip(tmp_path: Path) -> Path:
    """Almost all bytes in two 8 MiB tensors, plus a few small ones and plain values."""
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pth"
    torch.save(
        {
            "model": {"w1": torch.randn(2 * MB), "w2": torch.randn(2 * MB)},  # 8 MiB each
            "bias": torch.arange(7, dtype=torch.int64),
            "scale": torch.tensor(0.5),
            "step": 12,
            "args": {"lr": 0.1, "name": "run42"},
        },
        path,
    )
    return path


def _training(seed: int = 1) -> dict:
    """{'model', 'optimizer' (a real Adam state_dict after one step), 'epoch': 3}: the model is
    about 1.3 MB and the optimizer twice that."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 512)).square().mean().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}


@pytest.fixture
def training_zip(tmp_path: Path) -> Path:
    path = tmp_path / "train.pth"
    torch.save(_training(), path)
    return path


# --- torch zip ---


def test_s3_zip_json_equals_local_and_reads_metadata_only(s3: S3, capsys, big_zip: Path) -> None:
    url = s3.put(big_zip)
    remote = _inspect_json(capsys, url)
    served = s3.gets()
    sent = s3.sent()
    local = _inspect_json(capsys, str(big_zip))
    assert remote["path"] == url and local["bytes_read"] is None
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
    assert {tuple(t["path"]) for t in remote["tensors"]} == {
        ("model", "w1"),
        ("model", "w2"),
        ("bias",),
        ("scale",),
    }
    size = big_zip.stat().st_size
    assert size > 16 * MB
    assert all(r.status == 206 and r.range for r in served), served  # only range requests
    assert sent == remote["bytes_read"], served  # the server's count and ckptui's agree
    assert sent < size * 0.02, served
    assert sent < 64 * 1024, served
    print(f"s3 zip open: {len(served)} GETs, {sent:,} B served of {size:,} B")


# --- safetensors ---


def test_s3_safetensors_reads_the_header_only(
    s3: S3,
    capsys,
    big_safetensors: Path,  # noqa: F811 - the fixture imported above
) -> None:
    data = big_safetensors.read_bytes()
    url = s3.put(big_safetensors)
    remote = _inspect_json(capsys, url)
    header_end = 8 + int.from_bytes(data[:8], "little")
    served = s3.gets()
    assert s3.sent() == remote["bytes_read"] == header_end, served
    for r in served:
        assert int(r.range.removeprefix("bytes=").split("-")[1]) < header_end, served
    local = _inspect_json(capsys, str(big_safetensors))
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
    print(f"s3 safetensors open: {header_end:,} B served of {len(data):,} B")


# --- export: only the kept storages are fetched ---


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_s3_export_equals_the_local_export_and_fetches_the_kept_bytes(
    s3: S3, capsys, tmp_path: Path, training_zip: Path, fmt: str
) -> None:
    from ckptui.export import make_plan
    from ckptui.formats import open_checkpoint

    url = s3.put(training_zip)
    remote_out, local_out = tmp_path / f"remote.{fmt}", tmp_path / f"local.{fmt}"
    assert main(["export", url, "-o", str(remote_out)]) == 0, capsys.readouterr().err
    sent = s3.sent()
    assert main(["export", str(training_zip), "-o", str(local_out)]) == 0
    assert "verified" in capsys.readouterr().out
    assert remote_out.read_bytes() == local_out.read_bytes()

    plan = make_plan(open_checkpoint(str(training_zip)), fmt=fmt)
    assert plan.keep == [("model",)]
    model_bytes = sum(t.numel() * t.element_size() for t in _training()["model"].values())
    assert plan.data_bytes == model_bytes
    size = training_zip.stat().st_size
    assert model_bytes < size * 0.4
    # open + export + verify, all from the server: the kept bytes and a little metadata
    assert model_bytes <= sent <= model_bytes * 1.05, (sent, model_bytes, s3.gets())
    print(f"s3 export ({fmt}): {sent:,} B served for {model_bytes:,} kept B of {size:,} B")


# --- diff --values and why ---


def test_s3_diff_values_against_a_local_file(s3: S3, capsys, tmp_path: Path) -> None:
    state = _training()["model"]
    a = tmp_path / "a.pth"
    torch.save(state, a)
    url = s3.put(a)
    capsys.readouterr()
    assert main(["diff", url, str(a), "--values"]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["diff", url, str(a), "--values", "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["values_compared"] and same["equal"] == len(state)
    assert not any(d["max_abs"] for d in same["value_diff"]), same

    changed = {k: v.clone() for k, v in state.items()}
    changed["2.bias"][5] += 1.0
    b = tmp_path / "b.pth"
    torch.save(changed, b)
    capsys.readouterr()
    assert main(["diff", url, str(b), "--values", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in doc["value_diff"] if d["max_abs"]] == [["2.bias"]], doc
    assert doc["equal"] == len(state) - 1
    assert main(["diff", url, str(b), "--values"]) == 1
    assert "2.bias" in capsys.readouterr().out


def test_s3_why_equals_local(s3: S3, capsys, training_zip: Path) -> None:
    url = s3.put(training_zip)
    capsys.readouterr()
    assert main(["why", url, "--json"]) == 0, capsys.readouterr().err
    remote = json.loads(capsys.readouterr().out)
    assert main(["why", str(training_zip), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert _without(remote, "path") == _without(local, "path")
    assert remote["file_bytes"] == training_zip.stat().st_size


# --- errors: one line, exit 2, no output file ---


def _export_fails(capsys, tmp_path: Path, url: str) -> str:
    out = tmp_path / "out" / "x.safetensors"
    out.parent.mkdir()
    err = _one_line_error(capsys, ["export", url, "-o", str(out)])
    assert list(out.parent.iterdir()) == []  # no output, no temporary file
    return err


def test_s3_missing_key(s3: S3, capsys, tmp_path: Path) -> None:
    url = f"s3://{s3.bucket}/nope/missing.pth"
    err = _one_line_error(capsys, ["inspect", "--json", url])
    assert url in err and "not found" in err and "404" in err, err
    assert _export_fails(capsys, tmp_path, url) == err


def test_s3_missing_bucket(s3: S3, capsys, tmp_path: Path) -> None:
    url = "s3://no-such-bucket-here/ckpt.pth"
    err = _one_line_error(capsys, ["inspect", url])
    assert url in err and "bucket does not exist" in err, err
    _export_fails(capsys, tmp_path, url)


def test_s3_wrong_credentials(s3: S3, capsys, tmp_path: Path, training_zip: Path) -> None:
    url = s3.put(training_zip)
    with s3.server.iam_auth():  # moto's IAM knows no key: every request is refused with 403
        err = _one_line_error(capsys, ["inspect", url])
        assert url in err and "access denied" in err, err
        assert s3.server.log and all(r.status == 403 for r in s3.server.log), s3.server.log
        _export_fails(capsys, tmp_path, url)


def test_s3_no_credentials(
    s3: S3, capsys, monkeypatch, tmp_path_factory, tmp_path: Path, training_zip: Path
) -> None:
    url = s3.put(training_zip)
    # none in the environment, the config files (empty) or the EC2 metadata (disabled)
    use_endpoint(monkeypatch, s3.server, tmp_path_factory.mktemp("bare"), key=None)
    err = _one_line_error(capsys, ["inspect", url])
    assert url in err and "credentials" in err, err
    assert s3.server.log == []  # botocore refuses before sending anything
    _export_fails(capsys, tmp_path, url)


def test_s3_unreachable_endpoint(s3: S3, capsys, monkeypatch, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would take about 7 s
    clear_s3fs_cache()
    url = f"s3://{s3.bucket}/train.pth"
    err = _one_line_error(capsys, ["inspect", url])
    assert url in err and f"127.0.0.1:{port}" in err, err
    _export_fails(capsys, tmp_path, url)


# --- legacy files and sharded folders ---


def test_s3_legacy_equals_local_and_reads_a_small_fraction(
    s3: S3,
    capsys,
    big_legacy: Path,  # noqa: F811 - the fixture imported above
) -> None:
    url = s3.put(big_legacy)
    remote = _inspect_json(capsys, url)
    local = _inspect_json(capsys, str(big_legacy))
    assert remote["format"] == "torch-legacy"
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
    sent = s3.sent()
    assert sent == remote["bytes_read"], s3.gets()
    assert sent < big_legacy.stat().st_size * 0.02, s3.gets()
    print(f"s3 legacy open: {sent:,} B served of {big_legacy.stat().st_size:,} B")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    from .test_folders import tiny_gpt2

    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    tiny_gpt2().save_pretrained(folder, max_shard_size="100KB")
    return folder


def _comparable(doc: dict) -> dict:
    """`inspect --json` without what names the source (its path, and its folder, also inside
    messages) or counts its transfer."""
    rest = _without(doc, "path", "bytes_read")
    # the suggested export writes beside a local folder, or for a URL into the current directory
    rest["weights_only"] = _without(rest["weights_only"], "export_command")
    text = json.dumps(rest)
    text = text.replace(doc["path"], "PATH").replace(doc["info"]["folder"], "DIR")
    return json.loads(text)


@pytest.mark.parametrize("via", ["folder/", "folder", "index"])
def test_s3_sharded_equals_the_local_folder(s3: S3, capsys, sharded: Path, via: str) -> None:
    index = "model.safetensors.index.json"
    assert len(list(sharded.glob("*.safetensors"))) >= 3  # really sharded
    base = s3.server.upload_folder(s3.bucket, "gpt2", sharded).rstrip("/")
    s3.server.log.clear()
    url = {"folder/": f"{base}/", "folder": base, "index": f"{base}/{index}"}[via]
    remote = _inspect_json(capsys, url)
    local = _inspect_json(capsys, str(sharded / index) if via == "index" else str(sharded))
    assert remote["format"] == local["format"] == "hf-sharded"
    assert remote["info"]["folder"] == base
    assert _comparable(remote) == _comparable(local)
    command = remote["weights_only"]["export_command"]
    assert command == f"ckptui export {remote['path']} -o gpt2.weights.pth"
    total = sum(f.stat().st_size for f in sharded.iterdir())
    gets = s3.gets()
    ranged = sum(r.sent for r in gets if r.range)
    listed = [r for r in gets if not r.range]  # ListObjectsV2 on the bucket: XML, not file bytes
    assert all(r.path == f"/{s3.bucket}" for r in listed), gets
    assert ranged == remote["bytes_read"], gets  # ckptui counts file bytes only
    sent = ranged + sum(r.sent for r in listed)
    assert sent < total * 0.06, gets  # the index and each shard's header
    print(
        f"s3 sharded open ({via}): {ranged:,} B of files + {sent - ranged:,} B of "
        f"{len(listed)} listings served, of {total:,} B"
    )

"""Remote checkpoints over real HTTP on 127.0.0.1 (issue 9, first slice).

pytest-httpserver runs a real werkzeug server inside the test process and logs every request and
response, so the ranges the *server* served are asserted, not only ckptui's own count. It does not
serve ranges by itself; `_serve` answers `Range: bytes=a-b` with 206 through werkzeug's
`make_conditional`, which is what werkzeug's own file serving uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
pytest_httpserver = pytest.importorskip("pytest_httpserver")

from safetensors.torch import save_file
from werkzeug import Request, Response

from ckptui.cli.main import main
from ckptui.core.errors import CkptError, CorruptFile
from ckptui.formats import open_checkpoint
from ckptui.formats.remote.reader import RemoteSource
from ckptui.formats.torchzip import read_zip
from tests.conftest import child_env, run_python

MB = 1 << 20


def _serve(httpserver, name: str, data: bytes, ranges: bool = True) -> str:
    """Serve `data` at /name, honouring Range (206) unless `ranges` is False (then every GET
    gets the whole file with 200, as a server without range support does)."""

    def handler(request: Request) -> Response:
        resp = Response(data, content_type="application/octet-stream")
        if ranges:  # a server with ranges names the file's version, as nginx and S3 do
            resp.headers["ETag"] = etag
            resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
        return resp

    etag = f'"{hashlib.md5(data).hexdigest()}"'

    httpserver.expect_request(f"/{name}").respond_with_handler(handler)
    return httpserver.url_for(f"/{name}")


def _served_ranges(httpserver) -> list[tuple[str, int]]:
    """(Range header, bytes sent) of every 206 response in the server's own log."""
    return [
        (req.headers.get("Range", ""), int(resp.headers["Content-Length"]))
        for req, resp in httpserver.log
        if resp.status_code == 206
    ]


def _inspect_json(capsys, target: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", "--json", target]) == 0
    return json.loads(capsys.readouterr().out)


def _without(doc: dict, *keys: str) -> dict:
    return {k: v for k, v in doc.items() if k not in keys}


@contextlib.contextmanager
def _stalling(httpserver, name: str, data: bytes) -> Iterator[str]:
    """Serve `data` at /name, holding every tensor-data answer (a GET of over 1 MiB) until
    the block ends, as a server that stops sending does; yields the URL. On the way out the
    held answers are released and awaited, so they land in this test's server log."""
    gate = threading.Event()

    def handler(request: Request) -> Response:
        resp = Response(data, content_type="application/octet-stream")
        resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
        if request.method == "GET" and int(resp.headers["Content-Length"]) > MB:
            gate.wait(20)  # far longer than any test waits
        return resp

    httpserver.expect_request(f"/{name}").respond_with_handler(handler)
    try:
        yield httpserver.url_for(f"/{name}")
    finally:
        gate.set()
        until = time.monotonic() + 10
        while time.monotonic() < until and not any(n > MB for _, n in _served_ranges(httpserver)):
            time.sleep(0.05)


@pytest.fixture
def big_zip(tmp_path: Path) -> Path:
    """A training-like checkpoint whose bytes are almost all in two 8 MB tensors."""
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pth"
    torch.save(
        {
            "model": {"w1": torch.randn(2 * MB), "w2": torch.randn(2 * MB)},  # 8 MB each
            "bias": torch.arange(7, dtype=torch.int64),
            "step": 12,
            "args": {"lr": 0.1, "name": "run42"},
        },
        path,
    )
    return path


@pytest.fixture
def big_safetensors(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(
        {"a": torch.randn(2 * MB), "b": torch.zeros(3, 5, dtype=torch.bfloat16)},
        str(path),
        metadata={"format": "pt"},
    )
    return path


def test_remote_zip_json_equals_local(httpserver, capsys, big_zip: Path) -> None:
    url = _serve(httpserver, "ckpt.pth", big_zip.read_bytes())
    remote = _inspect_json(capsys, url)
    local = _inspect_json(capsys, str(big_zip))
    assert remote["path"] == url
    assert local["bytes_read"] is None
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
    assert {tuple(t["path"]) for t in remote["tensors"]} == {
        ("model", "w1"),
        ("model", "w2"),
        ("bias",),
    }


def test_remote_zip_reads_a_small_fraction_by_the_servers_log(httpserver, big_zip: Path) -> None:
    data = big_zip.read_bytes()
    url = _serve(httpserver, "ckpt.pth", data)
    ckpt = open_checkpoint(url)
    served = _served_ranges(httpserver)
    sent = sum(n for _, n in served)
    assert len(data) > 16 * MB
    assert sent == ckpt.info["bytes_read"]
    assert sent < 64 * 1024, served  # metadata only: the tensors are 16 MB
    # one request per storage would be 3 more; the directory, pickle and end are few requests
    assert len(served) <= 5, served
    # no served range reaches into any storage's data
    for st in ckpt.storages.values():
        for rng, _ in served:
            a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            assert b < st.data_offset or a >= st.data_offset + st.nbytes, (rng, st)


def test_remote_safetensors_reads_the_header_only(
    httpserver, capsys, big_safetensors: Path
) -> None:
    data = big_safetensors.read_bytes()
    url = _serve(httpserver, "model.safetensors", data)
    remote = _inspect_json(capsys, url)
    header_end = 8 + int.from_bytes(data[:8], "little")
    sent = sum(n for _, n in _served_ranges(httpserver))
    assert sent == remote["bytes_read"]
    assert sent == header_end < len(data) // 100  # the sniffed 16 bytes are not fetched twice
    assert all(int(r.split("-")[1]) < header_end for r, _ in _served_ranges(httpserver))
    local = _inspect_json(capsys, str(big_safetensors))
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")


def test_predicted_header_is_checked_when_data_is_first_read(httpserver, big_zip: Path) -> None:
    data = big_zip.read_bytes()
    url = _serve(httpserver, "ckpt.pth", data)
    src = RemoteSource.open(url)
    try:
        src.prefetch_zip()
        ckpt = read_zip(src)
        before = len(httpserver.log)
        st = ckpt.storages[next(k for k, s in ckpt.storages.items() if s.nbytes == 8 * MB)]
        assert src.read_at(st.data_offset, 64) == data[st.data_offset : st.data_offset + 64]
        # the real local header was fetched (once) before the data
        ranges = [req.headers.get("Range") for req, _ in httpserver.log[before:]]
        assert len(ranges) == 2, ranges
    finally:
        src.close()


def test_wrong_local_header_is_caught_on_first_data_read(httpserver, big_zip: Path) -> None:
    data = bytearray(big_zip.read_bytes())
    local = open_checkpoint(str(big_zip))
    st = max(local.storages.values(), key=lambda s: s.nbytes)
    # find that record's local header and change its extra length: the central directory
    # (and so the prediction) still says otherwise
    name = st.record.encode()
    at = data.rfind(b"PK\x03\x04" + b"", 0, st.data_offset)
    assert data[at + 30 : at + 30 + len(name)] == name
    xlen = int.from_bytes(data[at + 28 : at + 30], "little")
    data[at + 28 : at + 30] = (xlen + 1).to_bytes(2, "little")
    url = _serve(httpserver, "ckpt.pth", bytes(data))
    src = RemoteSource.open(url)
    try:
        src.prefetch_zip()
        ckpt = read_zip(src)
        assert ckpt.storages[st.key].data_offset == st.data_offset  # predicted, unchecked
        with pytest.raises(CorruptFile, match="local header does not match"):
            src.read_at(st.data_offset, 16)
    finally:
        src.close()


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_server_without_range_support(httpserver, capsys, big_zip: Path) -> None:
    url = _serve(httpserver, "ckpt.pth", big_zip.read_bytes(), ranges=False)
    err = _one_line_error(capsys, ["inspect", url])
    assert url in err
    assert "range requests" in err and "full download" in err


def test_not_found(httpserver, capsys) -> None:
    httpserver.expect_request("/missing.pth").respond_with_data("nope", status=404)
    url = httpserver.url_for("/missing.pth")
    err = _one_line_error(capsys, ["inspect", "--json", url])
    assert "404" in err and url in err


def test_unreachable_host(capsys) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _one_line_error(capsys, ["inspect", f"http://127.0.0.1:{port}/ckpt.pth"])
    assert "cannot reach the server" in err


@pytest.fixture
def big_legacy(tmp_path: Path) -> Path:
    """The legacy format (PyTorch < 1.6): pickles first, then each storage behind its 8-byte
    element count; a view shares its base's storage."""
    torch.manual_seed(2)
    w = torch.randn(2 * MB)
    path = tmp_path / "legacy.pth"
    torch.save(
        {
            "model": {"w1": w, "w1_view": w[10:20], "w2": torch.randn(MB), "n": torch.tensor(3)},
            "epoch": 4,
            "names": [f"layer{i}" for i in range(50)],
        },
        path,
        _use_new_zipfile_serialization=False,
    )
    return path


def test_remote_legacy_equals_local_and_reads_only_the_pickles(
    httpserver, capsys, big_legacy: Path
) -> None:
    url = _serve(httpserver, "legacy.pth", big_legacy.read_bytes())
    remote = _inspect_json(capsys, url)
    local = _inspect_json(capsys, str(big_legacy))
    assert remote["format"] == "torch-legacy"
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
    served = _served_ranges(httpserver)
    sent = sum(n for _, n in served)
    assert remote["bytes_read"] == sent  # the server's log agrees with ckptui's own count
    assert sent < 70_000 < big_legacy.stat().st_size // 100  # one 64 KiB block, not a request
    assert len(served) <= 2  # per storage: the counts are predicted, not fetched


def test_remote_legacy_values_check_the_storage_count(httpserver, big_legacy: Path) -> None:
    from ckptui.tensors.values import tensor_stats

    data = bytearray(big_legacy.read_bytes())
    url = _serve(httpserver, "legacy.pth", bytes(data))
    ckpt = open_checkpoint(url)
    local = open_checkpoint(str(big_legacy))
    for path in (("model", "w1_view"), ("model", "w2")):
        t, lt = ckpt.find(path).tensor, local.find(path).tensor
        assert tensor_stats(ckpt, t) == tensor_stats(local, lt)
    # a count that disagrees with the pickle is caught on the first read of that storage
    st = ckpt.storages[ckpt.find(("model", "w2")).tensor.storage_key]
    data[st.data_offset - 8 : st.data_offset] = (12345).to_bytes(8, "little")
    httpserver.clear()
    url = _serve(httpserver, "legacy2.pth", bytes(data))
    bad = open_checkpoint(url)
    with pytest.raises(CkptError, match=r"storage count at byte .* is 12345"):
        tensor_stats(bad, bad.find(("model", "w2")).tensor)


def test_remote_legacy_export_equals_the_local_one(
    httpserver, capsys, tmp_path: Path, big_legacy: Path
) -> None:
    url = _serve(httpserver, "legacy.pth", big_legacy.read_bytes())
    out_r, out_l = tmp_path / "r.safetensors", tmp_path / "l.safetensors"
    assert main(["export", url, "-o", str(out_r), "--keep", "model"]) == 0
    assert main(["export", str(big_legacy), "-o", str(out_l), "--keep", "model"]) == 0
    assert out_r.read_bytes() == out_l.read_bytes()


def test_remote_plain_pickle_skips_large_payloads(httpserver, capsys, tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "plain.pkl"
    blob = os.urandom(4 * MB)
    path.write_bytes(pickle.dumps({"meta": {"a": 1, "b": [1.5, "x"]}, "blob": blob, "z": 3}, 4))
    url = _serve(httpserver, "plain.pkl", path.read_bytes())
    remote = _inspect_json(capsys, url)
    local = _inspect_json(capsys, str(path))
    assert remote["format"] == "pickle"
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
    assert remote["bytes_read"] < 200_000  # the 4 MB payload in the middle is skipped


def test_local_path_does_not_import_fsspec(big_zip: Path) -> None:
    code = (
        "import sys\n"
        "from ckptui.cli.main import main\n"
        f"assert main(['inspect', '--json', {str(big_zip)!r}]) == 0\n"
        "bad = [m for m in ('fsspec', 'aiohttp', 'ckptui.formats.remote.reader') if m in sys.modules]\n"
        "print('IMPORTED', bad, file=sys.stderr)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMPORTED []" in done.stderr


async def test_the_browser_opens_a_url_and_shows_what_it_read(httpserver, big_zip: Path) -> None:
    from ckptui.app.app import CkptApp
    from ckptui.core import units
    from tests.app.test_browse import opened, text_of

    url = _serve(httpserver, "big.pth", big_zip.read_bytes())
    app = CkptApp(url)
    async with app.run_test(size=(160, 30)) as pilot:
        tree = await opened(pilot)
        header = text_of(app, "#header")
        served = sum(n for _, n in _served_ranges(httpserver))
        assert f"{units.size(tree.ckpt.info['bytes_read'])} read" in header
        assert tree.ckpt.info["bytes_read"] <= served < big_zip.stat().st_size // 100


# --- second slice: export (and values) from a remote checkpoint, reading only the kept bytes ---


@pytest.fixture
def training_zip(tmp_path: Path) -> Path:
    """A training checkpoint: a 2 MB model (one tensor a transposed view) and an 8 MB optimizer
    state, so a weights-only export keeps a fifth of the file."""
    torch.manual_seed(1)
    model = {
        "enc.weight": torch.randn(512, 512),  # 1 MB
        "dec.weight": torch.randn(256, 512).t(),  # 0.5 MB, strided
        "dec.bias": torch.randn(128 * 1024),  # 0.5 MB
        "steps": torch.tensor(7),
    }
    state = {
        i: {"exp_avg": torch.randn(MB // 4), "exp_avg_sq": torch.rand(MB // 4)}  # 2 MB each
        for i in range(4)
    }
    optim = {"state": state, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2, 3]}]}
    path = tmp_path / "train.pth"
    torch.save({"model": model, "optimizer": optim, "epoch": 3}, path)
    return path


def _serve_counting(
    httpserver, name: str, data: bytes, cut_after: int | None = None, cut_times: int = 10**9
) -> tuple[str, dict]:
    """Like `_serve`, but from the `cut_after`-th range request on, the next `cut_times` answers
    promise the whole range and send half of it, then close: a connection dropped midway."""
    state = {"requests": 0, "cut": 0}

    def handler(request: Request) -> Response:
        state["requests"] += 1
        resp = Response(data, content_type="application/octet-stream")
        resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
        body = resp.get_data()
        cutting = cut_after is not None and state["requests"] > cut_after
        # only tensor-data ranges (a HEAD sends no body, metadata ranges are small)
        if cutting and state["cut"] < cut_times and request.method == "GET" and len(body) > 4096:
            state["cut"] += 1
            resp.response = [body[: len(body) // 2]]  # Content-Length still says all
        return resp

    httpserver.expect_request(f"/{name}").respond_with_handler(handler)
    return httpserver.url_for(f"/{name}"), state


def _sent(log: list) -> list[tuple[str, int]]:
    """(Range header, body bytes) of every GET in a slice of the server's log (a HEAD sends
    none, whatever its Content-Length says)."""
    return [
        (req.headers.get("Range", ""), int(resp.headers["Content-Length"]))
        for req, resp in log
        if req.method == "GET"
    ]


def _ranges_overlap(rng: str, a: int, b: int) -> bool:
    lo, hi = (int(x) for x in rng.removeprefix("bytes=").split("-"))
    return lo < b and hi >= a


def test_remote_weights_export_transfers_only_the_kept_bytes(
    httpserver, tmp_path: Path, training_zip: Path
) -> None:
    from ckptui.export import export, make_plan

    url = _serve(httpserver, "train.pth", training_zip.read_bytes())
    ckpt = open_checkpoint(url)
    plan = make_plan(ckpt, fmt="safetensors")
    assert [p for p in plan.keep] == [("model",)]
    kept = plan.data_bytes
    assert kept == 2 * MB + 8, kept
    before = len(httpserver.log)
    result = export(plan, tmp_path / "remote.safetensors")
    served = _sent(httpserver.log[before:])
    sent = sum(n for _, n in served)
    assert all(rng for rng, _ in served), served  # every GET was a range request
    assert kept <= sent <= kept * 1.05, (sent, kept, served)
    # the model's four storages lie next to each other: one request brings them all, headers
    # between them included and checked (plus the HEAD and the cached directory: no GET)
    assert len(served) == 1, served
    print(
        f"export transferred {sent:,} B for {kept:,} kept B of {len(training_zip.read_bytes()):,}"
    )
    # no byte of the optimizer's storages was asked for
    optimizer = {t.storage_key for p, t in ckpt.tensors() if p[0] == "optimizer"}
    assert len(optimizer) == 8
    for key in optimizer:
        st = ckpt.storages[key]
        assert st.data_offset is not None
        for rng, _ in served:
            assert not _ranges_overlap(rng, st.data_offset, st.data_offset + st.nbytes), rng
    assert result.verified

    local = make_plan(open_checkpoint(str(training_zip)), fmt="safetensors")
    export(local, tmp_path / "local.safetensors")
    remote_bytes = (tmp_path / "remote.safetensors").read_bytes()
    assert remote_bytes == (tmp_path / "local.safetensors").read_bytes()
    from safetensors.torch import load_file

    want = torch.load(training_zip, weights_only=True)["model"]
    got = load_file(str(tmp_path / "remote.safetensors"))
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_remote_export_through_the_cli_equals_the_local_export(
    httpserver, capsys, tmp_path: Path, training_zip: Path, fmt: str
) -> None:
    url = _serve(httpserver, "train.pth", training_zip.read_bytes())
    remote_out, local_out = tmp_path / f"remote.{fmt}", tmp_path / f"local.{fmt}"
    capsys.readouterr()
    assert main(["export", url, "-o", str(remote_out), "--dtype", "bf16", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    opened = len(httpserver.log)
    assert main(["export", str(training_zip), "-o", str(local_out), "--dtype", "bf16"]) == 0
    assert "verified" in capsys.readouterr().out
    assert remote_out.read_bytes() == local_out.read_bytes()
    sent = sum(n for _, n in _sent(httpserver.log))
    assert sent < training_zip.stat().st_size * 0.3  # open + export: model and metadata only
    assert opened == len(httpserver.log)  # the local export asked the server nothing
    # --json says what the export itself fetched: the kept storages, a little over 2 MiB
    assert 2 * MB <= doc["bytes_read"] <= sent


def test_remote_export_retries_a_dropped_connection(
    httpserver, tmp_path: Path, training_zip: Path
) -> None:
    from ckptui.export import export, make_plan

    data = training_zip.read_bytes()
    url, state = _serve_counting(httpserver, "train.pth", data, cut_after=0, cut_times=2)
    plan = make_plan(open_checkpoint(url), fmt="safetensors")
    export(plan, tmp_path / "out.safetensors")
    assert state["cut"] == 2  # two answers were cut, and the third try of that range worked
    local = make_plan(open_checkpoint(str(training_zip)), fmt="safetensors")
    export(local, tmp_path / "local.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == (
        tmp_path / "local.safetensors"
    ).read_bytes()


def test_connection_cut_mid_export_fails_cleanly(
    httpserver, capsys, tmp_path: Path, training_zip: Path
) -> None:
    from ckptui.export import ExportError, export, make_plan

    data = training_zip.read_bytes()
    # The open: HEAD + 5 ranges; the export: HEAD + 3 metadata ranges + a header check; so
    # from the 12th request on, every tensor-data answer is cut short.
    url, state = _serve_counting(httpserver, "train.pth", data, cut_after=11)
    out = tmp_path / "out.safetensors"
    err = _one_line_error(capsys, ["export", url, "-o", str(out)])
    assert "connection dropped" in err and "gave up after 3 attempts" in err and url in err, err
    assert state["cut"] == 3, state  # bounded: three tries of one range, then the error
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [training_zip]  # no temporary file either

    ckpt = open_checkpoint(url)
    plan = make_plan(ckpt, fmt="safetensors")
    state["cut"] = 0
    with pytest.raises(ExportError, match="gave up after 3 attempts"):
        export(plan, out)
    assert state["cut"] == 3
    assert list(tmp_path.iterdir()) == [training_zip]


@pytest.mark.parametrize("name", ["enc.weight", "dec.weight", "steps"])
def test_remote_tensor_stats_read_only_that_tensor(
    httpserver, training_zip: Path, name: str
) -> None:
    from ckptui.tensors.values import tensor_stats

    url = _serve(httpserver, "train.pth", training_zip.read_bytes())
    ckpt = open_checkpoint(url)
    tensors = dict(ckpt.tensors())
    t = tensors["model", name]
    st = ckpt.storages[t.storage_key or ""]
    assert st.data_offset is not None
    before = len(httpserver.log)
    seen: list[float] = []
    got = tensor_stats(ckpt, t, chunk_elements=1 << 16, progress=seen.append)
    served = _sent(httpserver.log[before:])
    view = (t.span_elements() - t.storage_offset) * t.itemsize
    header_window = 30 + len(st.record or "") + 96
    assert sum(n for _, n in served) <= view + header_window, served
    assert len(served) == 1, served  # the header check rides along with the data
    lo = st.data_offset - header_window
    for rng, _ in served:  # nothing outside this storage and its local header
        a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        assert lo <= a and b < st.data_offset + st.nbytes, (rng, st)
    assert seen == sorted(seen) and seen[-1] == 1.0
    local = open_checkpoint(str(training_zip))
    assert got == tensor_stats(local, dict(local.tensors())["model", name], chunk_elements=1 << 16)


def test_remote_tensor_stats_check_the_local_header(httpserver, training_zip: Path) -> None:
    from ckptui.tensors.values import ValuesUnavailable, tensor_stats

    data = bytearray(training_zip.read_bytes())
    local = open_checkpoint(str(training_zip))
    t = dict(local.tensors())["model", "enc.weight"]
    st = local.storages[t.storage_key or ""]
    name = (st.record or "").encode()
    at = data.rfind(b"PK\x03\x04", 0, st.data_offset)
    assert data[at + 30 : at + 30 + len(name)] == name
    data[at + 30 : at + 30 + len(name)] = name[:-1] + b"X"  # another record's header
    url = _serve(httpserver, "train.pth", bytes(data))
    ckpt = open_checkpoint(url)
    with pytest.raises(ValuesUnavailable, match="local header does not match"):
        tensor_stats(ckpt, dict(ckpt.tensors())["model", "enc.weight"])


async def test_the_browser_fetches_remote_values_in_a_worker_with_progress(
    httpserver, big_zip: Path
) -> None:
    """Values of a remote tensor come from a worker (the UI never waits on the network), say
    how much they fetch and how far they got, and moving on cancels the rest of the read."""
    import threading

    from ckptui.app.app import CkptApp
    from ckptui.app.widgets.ckpt_tree import CkptTree
    from tests.app.test_browse import opened, settle, text_of

    data = big_zip.read_bytes()
    gate = threading.Event()

    def handler(request: Request) -> Response:
        resp = Response(data, content_type="application/octet-stream")
        resp.headers["ETag"] = '"v1"'
        resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
        if request.method == "GET" and int(resp.headers["Content-Length"]) > MB:
            gate.wait(10)  # tensor data waits until the test lets it through
        return resp

    httpserver.expect_request("/slow.pth").respond_with_handler(handler)
    app = CkptApp(httpserver.url_for("/slow.pth"))
    async with app.run_test(size=(160, 30)) as pilot:
        tree = await opened(pilot)
        assert tree.select_path(("model", "w1"))
        await pilot.pause(0.3)
        assert "fetching 8.0 MiB from the server" in text_of(app, "#stats")
        assert app.screen.query_one(CkptTree).has_focus  # the UI answers meanwhile
        assert tree.select_path(("model", "w2"))  # moving on cancels w1's read
        await pilot.pause(0.3)
        gate.set()
        await settle(pilot)
        stats = text_of(app, "#stats")
        w2 = torch.load(big_zip, mmap=True)["model"]["w2"]
        assert f"{w2.min().item():.4g} / {w2.max().item():.4g}" in stats
        data_gets = [n for _, n in _served_ranges(httpserver) if n > MB]
        # w1: its first 4 MiB block only (cancelled before the second); w2: both blocks. A
        # first block brings the zip local header before the data along (under 200 B).
        assert len(data_gets) == 3, data_gets
        assert all(4 * MB <= n < 4 * MB + 200 for n in data_gets), data_gets


def test_a_stalled_remote_read_gives_way_when_cancelled(httpserver, big_zip: Path) -> None:
    """A server that stops sending must not hold a worker (and so the app's exit) for the
    whole read timeout: cancelling returns at once."""
    from ckptui.core.cancel import Cancelled
    from ckptui.tensors.values import tensor_stats

    with _stalling(httpserver, "stall.pth", big_zip.read_bytes()) as url:
        ckpt = open_checkpoint(url)
        start = time.monotonic()
        with pytest.raises(Cancelled):
            tensor_stats(
                ckpt,
                ckpt.find(("model", "w1")).tensor,
                cancelled=lambda: time.monotonic() - start > 0.3,
            )
        assert time.monotonic() - start < 5


@pytest.mark.parametrize("fixture", ["big_zip", "big_legacy"])
def test_remote_why_equals_local_and_reads_no_tensor_data(
    httpserver, capsys, request, fixture: str
) -> None:
    """`why URL` breaks the file down from its metadata alone: the zip's local headers and
    padding are predicted from the directory, and the duplicate search (which would fetch
    tensor data) is skipped."""
    path: Path = request.getfixturevalue(fixture)
    url = _serve(httpserver, path.name, path.read_bytes())
    capsys.readouterr()
    assert main(["why", "--json", url]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main(["why", "--json", str(path)]) == 0
    local = json.loads(capsys.readouterr().out)
    local["findings"] = [f for f in local["findings"] if f["kind"] != "duplicate"]
    assert remote == local
    served = sum(n for _, n in _served_ranges(httpserver))
    assert served < 70_000 < path.stat().st_size // 100


def test_remote_diff_values_reads_each_tensor_once(
    httpserver, capsys, tmp_path: Path, training_zip: Path
) -> None:
    """`diff --values URL local`: equal files exit 0; one changed element exits 1 and names
    its tensor. Each compared tensor's bytes cross the network once per comparison."""
    url = _serve(httpserver, "train.pth", training_zip.read_bytes())
    capsys.readouterr()
    assert main(["diff", "--values", "--json", url, str(training_zip)]) == 0
    ck = torch.load(training_zip, weights_only=True)
    ck["model"]["enc.weight"][3, 4] += 0.5
    changed = tmp_path / "changed.pth"
    torch.save(ck, changed)
    capsys.readouterr()
    assert main(["diff", "--values", "--json", url, str(changed)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert "enc.weight" in json.dumps(doc)
    served = sum(n for _, n in _served_ranges(httpserver))
    tensor_bytes = sum(st.nbytes for st in open_checkpoint(str(training_zip)).storages.values())
    assert 2 * tensor_bytes <= served < 2 * tensor_bytes * 1.02


def test_the_weights_only_fix_for_a_url_writes_a_local_file(httpserver, tmp_path: Path) -> None:
    """The suggested export of a remote file refused by `torch.load(weights_only=True)` writes
    beside the user, not to the server's URL."""
    import argparse

    path = tmp_path / "run.pth"
    torch.save({"model": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=0.1)}, path)
    url = _serve(httpserver, "runs/run.pth", path.read_bytes())
    from ckptui.analysis.training.weights_only import weights_only_report

    report = weights_only_report(open_checkpoint(url))
    assert report.export_command == f"ckptui export {url} -o run.weights.pth"


def test_exports_of_a_url_are_written_locally(httpserver, capsys, big_zip: Path) -> None:
    """The default output of a remote source lands in the current folder, named after it; a
    URL as the output is refused in one line (the writer is local and atomic)."""
    from ckptui.export.plan import default_target

    url = _serve(httpserver, "runs/ckpt.pth", big_zip.read_bytes())
    assert default_target(url, "pth") == "ckpt.slim.pth"
    assert default_target("s3://bucket/models/gpt2/", "safetensors") == "gpt2.slim.safetensors"
    err = _one_line_error(capsys, ["export", url, "-o", "s3://bucket/out.safetensors"])
    assert "is a URL: the output is written to a local file" in err
    assert not Path("s3:").exists()


def test_planned_reads_never_fetch_a_byte_twice(httpserver) -> None:
    """Reads through a planned run come from one read-ahead window; a read that starts inside
    the window and runs past it fetches only the part that follows."""
    data = os.urandom(40 * MB)
    url = _serve(httpserver, "blob.bin", data)
    src = RemoteSource.open(url)
    try:
        src.plan_reads([(0, 1 * MB), (1 * MB + 100, 12 * MB), (12 * MB + 50, 30 * MB)])
        reads = [(0, 1 * MB), (1 * MB + 100, 11 * MB - 100), (12 * MB + 50, 16 * MB)]
        reads.append((28 * MB + 50, 2 * MB - 50))
        for at, n in reads:
            assert src.read_range(at, n) == data[at : at + n]
    finally:
        src.close()
    served = _served_ranges(httpserver)
    assert sum(n for _, n in served) == 30 * MB  # the run once, gaps included, nothing twice
    assert len(served) == 2  # 16 MiB of read-ahead, then the rest of the run


def test_inspect_says_what_opening_a_url_read(httpserver, capsys, big_zip: Path) -> None:
    from ckptui.core import units

    url = _serve(httpserver, "ckpt.pth", big_zip.read_bytes())
    capsys.readouterr()
    assert main(["inspect", url]) == 0
    out = " ".join(capsys.readouterr().out.split())
    sent = sum(n for _, n in _served_ranges(httpserver))
    assert f"· {units.size(sent)} read from the server" in out
    assert main(["inspect", str(big_zip)]) == 0
    assert "read from the server" not in capsys.readouterr().out


def test_any_fsspec_url_works_the_same_way(capsys, tmp_path: Path, training_zip: Path) -> None:
    """Nothing is HTTP- or S3-specific: fsspec's in-memory file system stands in for the
    others (gs://, hf://, ...), for opening and for a weights-only export."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/ckptui-test/train.pth", training_zip.read_bytes())
    try:
        url = "memory://ckptui-test/train.pth"
        remote = _inspect_json(capsys, url)
        local = _inspect_json(capsys, str(training_zip))
        assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
        assert 0 < remote["bytes_read"] < training_zip.stat().st_size // 100
        out_r, out_l = tmp_path / "r.safetensors", tmp_path / "l.safetensors"
        assert main(["export", url, "-o", str(out_r)]) == 0
        assert main(["export", str(training_zip), "-o", str(out_l)]) == 0
        assert out_r.read_bytes() == out_l.read_bytes()
    finally:
        fs.rm("/ckptui-test", recursive=True)


async def test_the_export_dialog_writes_a_remote_checkpoint_locally(
    httpserver, tmp_path: Path, training_zip: Path, monkeypatch
) -> None:
    """x on a URL: the target is a local file named after the remote one, and the result says
    how much was fetched (the weights, not the optimizer state)."""
    from textual.content import Content
    from textual.widgets import Input, Static

    from ckptui.app.app import CkptApp
    from ckptui.app.screens.export import ExportDoneScreen
    from ckptui.core import units
    from tests.app.test_browse import opened
    from tests.app.test_export import finish, open_dialog

    monkeypatch.chdir(tmp_path)
    url = _serve(httpserver, "runs/train.pth", training_zip.read_bytes())
    app = CkptApp(url)
    async with app.run_test(size=(110, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        # with no marks the dialog suggests the root panel's name (issue 18): <stem>.weights.pth
        assert screen.query_one("#export-target", Input).value == "train.weights.pth"
        await pilot.press("enter")
        await finish(pilot)
        done = app.screen
        assert isinstance(done, ExportDoneScreen)
        assert done.result.verified and 2 * MB <= done.result.bytes_read < 3 * MB
        said = " ".join(Content.from_markup(str(w.content)).plain for w in done.query(Static))
        fetched = units.size(done.result.bytes_read)
        assert f"Fetched {fetched} of the {units.size(training_zip.stat().st_size)}" in said
    local = tmp_path / "local.pth"
    assert main(["export", str(training_zip), "-o", str(local)]) == 0
    assert (tmp_path / "train.weights.pth").read_bytes() == local.read_bytes()


def test_a_remote_export_stops_at_once_while_the_server_stalls(
    httpserver, tmp_path: Path, training_zip: Path
) -> None:
    """The app's esc (`cancelled`) stops an export whose read is waiting on a stalled server,
    without waiting for the read timeout, and nothing is left behind."""
    from ckptui.core.cancel import Cancelled
    from ckptui.export import export, make_plan

    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "model.pth"
    with _stalling(httpserver, "stall.pth", training_zip.read_bytes()) as url:
        plan = make_plan(open_checkpoint(url))
        start = time.monotonic()
        with pytest.raises(Cancelled):
            export(plan, out, cancelled=lambda: time.monotonic() - start > 0.3)
        assert time.monotonic() - start < 5
        assert list(out.parent.iterdir()) == []  # no output, no temp file


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_terminated_export_leaves_no_temp_file(
    httpserver, tmp_path: Path, training_zip: Path, sig: str
) -> None:
    """`ckptui export` killed by SIGTERM/SIGHUP (a scheduler's timeout, a closed SSH session)
    mid-transfer removes its temp file, as on Ctrl-C."""
    import signal

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = child_env()
    with _stalling(httpserver, "stall.pth", training_zip.read_bytes()) as url:
        argv = [sys.executable, "-m", "ckptui", "export", url, "-o", str(out_dir / "model.pth")]
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        try:
            until = time.monotonic() + 60
            while not list(out_dir.iterdir()) and time.monotonic() < until:
                time.sleep(0.05)  # the temp file appears once writing starts
            assert list(out_dir.iterdir()), "the export never started writing"
            time.sleep(0.3)
            proc.send_signal(getattr(signal, sig))
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130 and "interrupted" in err, err
    assert list(out_dir.iterdir()) == []


def test_a_url_signed_for_get_only_opens(httpserver, capsys, big_zip: Path) -> None:
    """A presigned S3 URL (or any server) that refuses HEAD: the size comes from a GET's
    headers, the body is not read, and range requests do the rest."""
    data = big_zip.read_bytes()

    def handler(request: Request) -> Response:
        if request.method == "HEAD":
            return Response("signature does not match", status=403)
        resp = Response(data, content_type="application/octet-stream")
        resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
        return resp

    httpserver.expect_request("/signed.pth").respond_with_handler(handler)
    url = httpserver.url_for("/signed.pth") + "?X-Amz-Signature=abc&X-Amz-Expires=600"
    remote = _inspect_json(capsys, url)
    local = _inspect_json(capsys, str(big_zip))
    assert _without(remote, "path", "bytes_read") == _without(local, "path", "bytes_read")
    assert remote["bytes_read"] < 4096

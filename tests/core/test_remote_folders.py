"""Sharded models at a URL: the index plus each shard's header (issue 9).

A real `save_pretrained(max_shard_size="100KB")` folder (and `.bin` shards made from it with
torch.save) is served by pytest-httpserver with werkzeug's Range handling; what the *server*
sent is asserted, not only ckptui's own count. One case lists a folder on S3 (moto's server).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
pytest.importorskip("pytest_httpserver")

from safetensors.torch import load_file
from werkzeug import Request, Response

from ckptui.cli.main import main
from ckptui.core.errors import CorruptFile, NotFound
from ckptui.formats import open_checkpoint

from .test_folders import sharded  # noqa: F401  (a fixture: a real save_pretrained folder)


def _forget_remote_metadata() -> None:
    """Empty the cache of recently fetched metadata, so that every open below is a first open
    and the server's log shows what one costs."""
    from ckptui.formats.remote import fs as remote_io

    remote_io._METADATA.clear()


@pytest.fixture(autouse=True)
def _fresh_opens():
    _forget_remote_metadata()
    yield
    _forget_remote_metadata()


@pytest.fixture(scope="module")
def bin_sharded(sharded, tmp_path_factory) -> Path:  # noqa: F811
    """The same model as `pytorch_model-*.bin` torch-zip shards (transformers 5 writes
    safetensors only), with `pytorch_model.bin.index.json`."""
    src, _ = sharded
    folder = tmp_path_factory.mktemp("hfbin") / "gpt2"
    folder.mkdir()
    index = json.loads((src / "model.safetensors.index.json").read_text())
    names = sorted(set(index["weight_map"].values()))
    renamed = {n: f"pytorch_model-{i:05d}-of-{len(names):05d}.bin" for i, n in enumerate(names, 1)}
    for name, new in renamed.items():
        torch.save(load_file(src / name), folder / new)
    weight_map = {k: renamed[v] for k, v in index["weight_map"].items()}
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": index["metadata"], "weight_map": weight_map})
    )
    (folder / "config.json").write_bytes((src / "config.json").read_bytes())
    return folder


def _serve_folder(
    httpserver,
    folder: Path,
    missing: tuple[str, ...] = (),
    latency: float = 0.0,
    in_flight: InFlight | None = None,
) -> str:
    """Serve every file of `folder` under /m/ with Range support (206); anything else, and the
    names in `missing`, is a 404. `latency` seconds pass before each answer, as on a real link;
    `in_flight` counts the requests being answered at once. Returns the folder's URL (no
    trailing slash)."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in missing}

    def handler(request: Request) -> Response:
        if in_flight is not None:
            with in_flight:
                return answer(request)
        return answer(request)

    def answer(request: Request) -> Response:
        if latency:
            time.sleep(latency)
        data = files.get(request.path.removeprefix("/m/"))
        if data is None:
            return Response("not found", status=404)
        resp = Response(data, content_type="application/octet-stream")
        resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
        return resp

    httpserver.expect_request(re.compile(r"^/m/.*")).respond_with_handler(handler)
    return httpserver.url_for("/m")


class InFlight:
    """How many requests a threaded server is answering at once, and the most there were."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def _gets(log: list) -> list[tuple[str, str, int]]:
    """(file, Range header, body bytes) of every GET the server answered."""
    return [
        (req.path.removeprefix("/m/"), req.headers.get("Range", ""), _length(resp))
        for req, resp in log
        if req.method == "GET"
    ]


def _length(resp: Response) -> int:
    return int(resp.headers.get("Content-Length", 0))


def _span(rng: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in rng.removeprefix("bytes=").split("-"))
    return lo, hi + 1


def _inspect_json(capsys, target: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", "--json", target]) == 0
    return json.loads(capsys.readouterr().out)


def _comparable(doc: dict) -> dict:
    """`inspect --json` without what names the source (its path and folder, also inside
    messages) or counts its transfer."""
    path = doc["path"]
    doc = {k: v for k, v in doc.items() if k not in ("path", "bytes_read")}
    # the suggested export writes beside the folder, or for a URL into the current directory
    doc["weights_only"] = {k: v for k, v in doc["weights_only"].items() if k != "export_command"}
    text = json.dumps(doc)
    text = text.replace(path, "PATH").replace(doc["info"]["folder"], "DIR")
    return json.loads(text)


FOLDERS = ["safetensors", "bin"]


@pytest.fixture(params=FOLDERS)
def folder(request, sharded, bin_sharded) -> tuple[Path, str]:  # noqa: F811
    """(local folder, its index's name)."""
    if request.param == "safetensors":
        return sharded[0], "model.safetensors.index.json"
    return bin_sharded, "pytorch_model.bin.index.json"


def test_index_url_inspects_as_the_local_folder(httpserver, capsys, folder) -> None:
    local, index = folder
    base = _serve_folder(httpserver, local)
    remote = _inspect_json(capsys, f"{base}/{index}")
    here = _inspect_json(capsys, str(local / index))
    assert remote["format"] == "hf-sharded" and remote["info"]["folder"] == base
    assert remote["path"] == f"{base}/{index}"
    assert here["bytes_read"] is None and remote["bytes_read"] > 0
    assert _comparable(remote) == _comparable(here)
    assert here["weights_only"]["export_command"].endswith(f" -o {local}.weights.pth")
    name = base.rsplit("/", 1)[-1]
    assert remote["weights_only"]["export_command"].endswith(f" -o {name}.weights.pth")
    assert len(remote["tensors"]) == len(json.loads((local / index).read_text())["weight_map"])
    # the folder URL (HTTP: found by the index's standard name) opens the same model
    via_folder = _inspect_json(capsys, f"{base}/")
    assert via_folder["path"] == f"{base}/"
    for key in ("tree", "tensors", "findings", "file_bytes"):
        assert via_folder[key] == here[key], key


def test_opening_reads_the_index_and_each_shards_metadata_only(httpserver, folder) -> None:
    local, index = folder
    base = _serve_folder(httpserver, local)
    ckpt = open_checkpoint(f"{base}/{index}")
    gets = _gets(httpserver.log)
    sent = sum(n for _, _, n in gets)
    total = sum((local / f).stat().st_size for f in ckpt.info["files"])
    assert sent == ckpt.info["bytes_read"]
    assert sent < total * 0.06, (sent, total)
    print(f"{index}: opening read {sent:,} B of {total:,} B ({len(gets)} GETs)")
    assert {f for f, _, _ in gets} == {index, *ckpt.info["files"]}
    data = {}  # shard -> [start, stop) of every storage's bytes
    for st in ckpt.storages.values():
        assert st.data_offset is not None and st.file is not None
        data.setdefault(st.file, []).append((st.data_offset, st.data_offset + st.nbytes))
    for file, rng, _ in gets:
        if file == index:
            continue
        lo, hi = _span(rng)
        if file.endswith(".safetensors"):  # the 8-byte length and the JSON header, no more
            head = int.from_bytes((local / file).read_bytes()[:8], "little")
            assert hi <= 8 + head, (file, rng)
        assert not any(lo < b and hi > a for a, b in data[file]), (file, rng)


def test_a_missing_shard_is_reported(httpserver, capsys, sharded) -> None:  # noqa: F811
    local, truth = sharded
    index = json.loads((local / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[1]
    base = _serve_folder(httpserver, local, missing=(gone,))
    ckpt = open_checkpoint(f"{base}/model.safetensors.index.json")
    [finding] = [f for f in ckpt.findings if f.kind == "missing_shard"]
    lost = {k for k, v in index["weight_map"].items() if v == gone}
    assert finding.message == f"shard {gone} is missing: its {len(lost):,} tensors are unavailable"
    assert {p[0] for p, _ in ckpt.tensors()} == set(truth) - lost
    assert {c.key for c in ckpt.root.children if c.type == "missing"} == lost


def test_shard_names_outside_the_folder_are_refused(httpserver, tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../secret.safetensors"}})
    )
    base = _serve_folder(httpserver, tmp_path)
    with pytest.raises(CorruptFile, match="lies outside the folder"):
        open_checkpoint(f"{base}/model.safetensors.index.json")


def test_an_http_folder_without_a_standard_index_is_one_line(httpserver, capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    base = _serve_folder(httpserver, tmp_path)
    with pytest.raises(NotFound, match="pass the index file's URL"):
        open_checkpoint(f"{base}/")
    capsys.readouterr()
    assert main(["inspect", f"{base}/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass the index file's URL" in err


def test_export_equals_the_local_export_and_moves_the_kept_bytes(
    httpserver, capsys, tmp_path: Path, folder
) -> None:
    local, index = folder
    base = _serve_folder(httpserver, local)
    url = f"{base}/{index}"
    opened = open_checkpoint(url).info["bytes_read"]  # what one open costs
    assert opened == sum(n for _, _, n in _gets(httpserver.log))
    _forget_remote_metadata()
    httpserver.clear_log()
    remote_out, local_out = tmp_path / "remote.safetensors", tmp_path / "local.safetensors"
    assert main(["export", url, "-o", str(remote_out), "--json"]) == 0
    sent = sum(n for _, _, n in _gets(httpserver.log)) - opened  # the CLI opens it first
    assert main(["export", str(local / index), "-o", str(local_out), "--json"]) == 0
    assert remote_out.read_bytes() == local_out.read_bytes()
    kept = sum(v.numel() * v.element_size() for v in load_file(local_out).values())
    assert kept <= sent <= kept * 1.05, (sent, kept)
    assert json.loads(capsys.readouterr().out.splitlines()[0])["verified"]
    with capsys.disabled():
        print(f"{index}: export moved {sent:,} B for {kept:,} kept B (opening: {opened:,} B)")


def test_diff_values_between_the_url_and_the_local_folder(
    httpserver,
    capsys,
    sharded,  # noqa: F811
) -> None:
    local, _ = sharded
    base = _serve_folder(httpserver, local)
    capsys.readouterr()
    code = main(["diff", "--values", "--json", f"{base}/model.safetensors.index.json", str(local)])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc


def test_why_json_attributes_bytes_per_shard(httpserver, capsys, folder) -> None:
    local, index = folder
    base = _serve_folder(httpserver, local)
    capsys.readouterr()
    assert main(["why", f"{base}/{index}", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert main(["why", str(local / index), "--json"]) == 0
    here = json.loads(capsys.readouterr().out)
    shards = set(open_checkpoint(str(local / index)).info["files"])
    rows = {g["path"][0]: g["bytes"] for g in b["groups"] if len(g["path"]) == 1}
    assert shards <= set(rows) and all(rows[s] > 0 for s in shards)
    here_rows = {g["path"][0]: g["bytes"] for g in here["groups"] if len(g["path"]) == 1}
    assert {s: rows[s] for s in shards} == {s: here_rows[s] for s in shards}
    assert set(rows) == {*shards, index}
    assert sum(b["categories"].values()) == b["file_bytes"]
    # HTTP lists no folder: the shards and the index count, config.json and the like do not
    unseen = sum(p.stat().st_size for p in local.iterdir() if p.name not in {*shards, index})
    assert b["file_bytes"] == here["file_bytes"] - unseen
    assert b["categories"]["tensor_data"] == here["categories"]["tensor_data"]


# --- S3: a folder is listed (moto's server on 127.0.0.1) ---


@pytest.fixture
def s3_bucket(monkeypatch):
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    import boto3
    import fsspec

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="ckpts")
    try:
        yield client
    finally:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_an_s3_folder_is_listed_and_opens_as_the_local_one(
    s3_bucket,
    capsys,
    sharded,  # noqa: F811
) -> None:
    local, _ = sharded
    for p in local.iterdir():
        s3_bucket.put_object(Bucket="ckpts", Key=f"model/{p.name}", Body=p.read_bytes())
    here = _inspect_json(capsys, str(local))
    for url in ("s3://ckpts/model/", "s3://ckpts/model"):
        _forget_remote_metadata()
        remote = _inspect_json(capsys, url)
        assert remote["info"]["folder"] == "s3://ckpts/model"
        assert _comparable(remote) == _comparable(here), url
        total = sum(p.stat().st_size for p in local.iterdir())
        assert 0 < remote["bytes_read"] < total * 0.06
    _forget_remote_metadata()
    index = _inspect_json(capsys, "s3://ckpts/model/model.safetensors.index.json")
    assert _comparable(index) == _comparable(
        _inspect_json(capsys, str(local / "model.safetensors.index.json"))
    )


def test_an_s3_folder_of_checkpoint_files_has_one_node_per_file(s3_bucket, capsys) -> None:
    """Not a sharded model: every checkpoint file in the listing is a node, as locally."""
    import io

    torch.manual_seed(0)
    files = {
        "global_step10/mp_rank_00_model_states.pt": {"module": {"w": torch.randn(4, 4)}},
        "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt": {"o": [torch.randn(16)]},
    }
    for key, obj in files.items():
        buf = io.BytesIO()
        torch.save(obj, buf)
        s3_bucket.put_object(Bucket="ckpts", Key=f"ds/{key}", Body=buf.getvalue())
    s3_bucket.put_object(Bucket="ckpts", Key="ds/latest", Body=b"global_step10")
    ckpt = open_checkpoint("s3://ckpts/ds/")
    assert ckpt.format == "folder" and ckpt.info["producer"] == "deepspeed"
    assert [c.key for c in ckpt.root.children] == sorted(files)
    assert set(ckpt.info["other_files"]) == {"latest"}
    assert ckpt.info["bytes_read"] > 0


def test_a_dcp_folder_on_s3_is_one_line(s3_bucket, capsys) -> None:
    s3_bucket.put_object(Bucket="ckpts", Key="dcp/.metadata", Body=b"\x80\x04N.")
    s3_bucket.put_object(Bucket="ckpts", Key="dcp/__0_0.distcp", Body=b"\0" * 64)
    capsys.readouterr()
    assert main(["inspect", "s3://ckpts/dcp/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not supported yet" in err


def test_shards_are_opened_concurrently(folder) -> None:
    """Each shard's open is a few round trips that wait on the network: shards are opened
    several at a time, so a model of many shards does not cost them all in a row."""
    from pytest_httpserver import HTTPServer

    local, index = folder
    server = HTTPServer(threaded=True)  # the fixture's server answers one request at a time
    server.start()
    try:
        in_flight = InFlight()
        base = _serve_folder(server, local, latency=0.05, in_flight=in_flight)
        ckpt = open_checkpoint(f"{base}/{index}")
        requests = len(server.log)
    finally:
        server.stop()
    here = open_checkpoint(str(local / index))
    assert {p for p, _ in ckpt.tensors()} == {p for p, _ in here.tensors()}
    assert requests >= 3 * ckpt.info["shards"]
    # Counted, not timed (a timed assertion failed on a loaded machine): opened one after the
    # other, no two requests would ever be in the server at once; each waits 50 ms there, so
    # shards opened together overlap.
    assert in_flight.peak >= 2, in_flight.peak


@pytest.mark.parametrize(
    "name",
    ["a\0b.safetensors", "", ".", "model.safetensors.index.json", "../secret.safetensors",
     "%2e%2e/secret.safetensors", "..%2Fsecret.safetensors", "x?y=../../secret.safetensors",
     "x#frag", "//127.0.0.1/secret.safetensors", "https://127.0.0.1:9/secret.safetensors",
     "\ud800.safetensors"],
)  # fmt: skip
def test_hostile_shard_names_at_a_url_are_one_line_and_fetch_nothing_else(
    httpserver, capsys, tmp_path: Path, name: str
) -> None:
    """Issue 20: what a local index refuses, a URL's index refuses too, before any request
    for the shard; URL syntax in a name (`%2e%2e/` decodes to `../`) is refused as well."""
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": name}}))
    base = _serve_folder(httpserver, tmp_path)
    httpserver.expect_request(re.compile(r"^/secret.*")).respond_with_data(b"secret")
    assert main(["inspect", f"{base}/model.safetensors.index.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ckptui: {base}/"), err
    assert {req.path for req, _ in httpserver.log} == {"/m/model.safetensors.index.json"}

"""Export: real checkpoints in, files that the real loaders accept out, and nothing half-written."""

from __future__ import annotations

import errno
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptui.export import ExportError, export, make_plan, resolve_path
from ckptui.export import writers as writers_mod
from ckptui.export.zipwriter import ZipWriter, size_of
from ckptui.formats import open_checkpoint

from ..conftest import TinyNet, digest, run_cli


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if "ckptui-tmp" in p.name]


def flip_a_chunk(monkeypatch, n: int) -> None:
    """The writer's `n`-th chunk of source bytes (from 1) gets its first byte flipped."""
    real = writers_mod.SourceBytes.chunks
    state = {"n": 0}

    def corrupt(self, item):
        for chunk in real(self, item):
            state["n"] += 1
            data = bytes(chunk)
            if state["n"] == n:
                data = bytes([data[0] ^ 1]) + data[1:]
            yield data

    monkeypatch.setattr(writers_mod.SourceBytes, "chunks", corrupt)


def test_pth_of_a_dataparallel_checkpoint_loads_strictly(dp_ckpt, tmp_path: Path) -> None:
    src, ck = dp_ckpt
    before = digest(src)
    plan = make_plan(open_checkpoint(src))
    assert plan.keep == [("model",)] and plan.strip_prefix == "module."
    out = tmp_path / "w.pth"
    result = export(plan, out)
    assert result.verified and result.bytes == out.stat().st_size == result.predicted_bytes
    sd = torch.load(out, weights_only=True)
    net = TinyNet()
    net.load_state_dict(sd, strict=True)
    for k, v in ck["model"].items():
        assert torch.equal(sd[k.removeprefix("module.")], v)
    assert digest(src) == before
    assert leftovers(tmp_path) == []


def test_safetensors_with_tied_weights_and_metadata(tmp_path: Path) -> None:
    emb = torch.randn(50, 8)
    sd = {"embed.weight": emb, "head.weight": emb, "bias": torch.zeros(8)}
    src = tmp_path / "tied.pth"
    torch.save({"model": sd, "epoch": 3, "iteration": 99}, src)
    plan = make_plan(open_checkpoint(src), fmt="safetensors")
    assert [it.group for it in plan.items] == [0, 0, 1]  # tied: one source view
    out = tmp_path / "w.safetensors"
    result = export(plan, out)
    loaded = load_file(out)
    assert torch.equal(loaded["embed.weight"], emb) and torch.equal(loaded["head.weight"], emb)
    assert result.bytes == out.stat().st_size == result.predicted_bytes
    from safetensors import safe_open

    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt", "epoch": "3", "iteration": "99"}
    # in .pth the tied pair stays one storage
    pth = tmp_path / "w.pth"
    export(make_plan(open_checkpoint(src)), pth)
    back = torch.load(pth, weights_only=True)
    assert back["embed.weight"].untyped_storage().data_ptr() == (
        back["head.weight"].untyped_storage().data_ptr()
    )


def test_bf16_halves_float_bytes_and_leaves_ints(dp_ckpt, tmp_path: Path) -> None:
    src, ck = dp_ckpt
    ckpt = open_checkpoint(src)
    keep = make_plan(ckpt)
    half = make_plan(ckpt, dtype="bf16")
    floats = sum(it.nbytes for it in keep.items if it.dtype == "float32")
    ints = sum(it.nbytes for it in keep.items if it.dtype == "int64")
    assert half.data_bytes == floats // 2 + ints
    out = tmp_path / "h.pth"
    export(half, out)
    sd = torch.load(out, weights_only=True)
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(sd["bn1.num_batches_tracked"], ck["model"]["module.bn1.num_batches_tracked"])
    w = ck["model"]["module.conv1.weight"]
    assert sd["conv1.weight"].dtype == torch.bfloat16
    assert torch.equal(sd["conv1.weight"], w.to(torch.bfloat16))  # same rounding as torch
    fp16 = tmp_path / "h.safetensors"
    export(make_plan(ckpt, dtype="fp16", fmt="safetensors"), fp16)
    assert torch.equal(load_file(fp16)["conv1.weight"], w.to(torch.float16))


def test_a_view_of_a_big_storage_exports_compact(tmp_path: Path) -> None:
    big = torch.randn(4_000_000)  # 16 MB
    src = tmp_path / "view.pth"
    torch.save({"model": {"w": big[100:110], "t": big.view(2000, 2000)[:3, :5]}}, src)
    out = tmp_path / "small.pth"
    result = export(make_plan(open_checkpoint(src)), out)
    assert result.bytes < 4096
    sd = torch.load(out, weights_only=True)
    assert torch.equal(sd["w"], big[100:110]) and torch.equal(sd["t"], big.view(2000, 2000)[:3, :5])
    assert sd["t"].is_contiguous()


def test_whole_module_pickle_exports_a_state_dict(tmp_path: Path) -> None:
    net = TinyNet()
    src = tmp_path / "module.pt"
    torch.save(net, src)
    out = tmp_path / "sd.pth"
    export(make_plan(open_checkpoint(src)), out)
    sd = torch.load(out, weights_only=True)
    assert set(sd) == set(net.state_dict())
    fresh = TinyNet()
    fresh.load_state_dict(sd, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(sd[k], v)


def test_refuses_the_source_and_existing_files(dp_ckpt, tmp_path: Path) -> None:
    src, _ = dp_ckpt
    plan = make_plan(open_checkpoint(src))
    before = digest(src)
    with pytest.raises(ExportError, match="source checkpoint"):
        export(plan, src, force=True)
    other = tmp_path / "exists.pth"
    other.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="already exists"):
        export(plan, other)
    assert other.read_bytes() == b"keep me"
    export(plan, other, force=True)
    assert torch.load(other, weights_only=True)
    assert digest(src) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")]
)
def test_interrupted_or_full_disk_leaves_nothing(dp_ckpt, tmp_path: Path, error) -> None:
    src, _ = dp_ckpt
    before = digest(src)
    plan = make_plan(open_checkpoint(src))
    out = tmp_path / "w.pth"
    calls = []

    def fail(done: int, total: int, name: str) -> None:
        calls.append(name)
        if len(calls) == 3:  # midway through the tensors
            raise error

    with pytest.raises((KeyboardInterrupt, ExportError)) as info:
        export(plan, out, progress=fail)
    if isinstance(error, OSError):
        assert "no space left" in str(info.value.message)
    assert not out.exists() and leftovers(tmp_path) == []
    assert digest(src) == before


def test_failed_verification_leaves_nothing(dp_ckpt, tmp_path, monkeypatch) -> None:
    src, _ = dp_ckpt
    plan = make_plan(open_checkpoint(src))
    flip_a_chunk(monkeypatch, 2)  # the writer's second chunk gets one flipped byte
    out = tmp_path / "w.pth"
    with pytest.raises(ExportError, match="verification failed"):
        export(plan, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_keep_paths_and_prefix_options(dp_ckpt, tmp_path: Path) -> None:
    src, _ = dp_ckpt
    ckpt = open_checkpoint(src)
    assert resolve_path(ckpt, "model.module.conv1.weight") == ("model", "module.conv1.weight")
    assert resolve_path(ckpt, "['model']['module.conv1.weight']") == (
        "model",
        "module.conv1.weight",
    )
    with pytest.raises(ExportError, match="no 'nope'"):
        resolve_path(ckpt, "nope")
    plan = make_plan(ckpt, strip_prefix="none")
    assert plan.items[0].name.startswith("module.")
    two = make_plan(ckpt, keep=[("model",), ("optimizer",)])
    names = {it.name for it in two.items}
    assert "model.module.conv1.weight" in names or "model.conv1.weight" in names
    assert any(n.startswith("optimizer.state.") for n in names)


def test_zip_layout_is_aligned_and_sized_exactly() -> None:
    import io

    records = [("a/data.pkl", b"x" * 7), ("a/data/0", b"y" * 1000), ("a/data/1", b"z" * 3)]
    buf = io.BytesIO()
    w = ZipWriter(buf)
    for name, data in records:
        w.write_record(name, [data], len(data))
    w.close()
    raw = buf.getvalue()
    assert len(raw) == size_of([(n, len(d)) for n, d in records])
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        assert z.testzip() is None  # CRCs right
        for info in z.infolist():
            local = raw[info.header_offset : info.header_offset + 30]
            start = info.header_offset + 30 + local[26] + local[28]
            assert start % 64 == 0
            assert z.read(info) == dict(records)[info.filename]
            assert info.extra == b""  # the padding lives in the local header only, as torch's


def test_export_cli_json(dp_ckpt, tmp_path: Path) -> None:
    src, _ = dp_ckpt
    out = tmp_path / "w.safetensors"
    r = run_cli("export", str(src), "-o", str(out), "--dtype", "bf16", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["output"] == str(out) and data["verified"] is True
    assert data["bytes"] == out.stat().st_size == data["predicted_bytes"]
    assert data["kept_paths"] == [["model"]] and data["tensors"] == len(load_file(out))
    r = run_cli("export", str(src), "-o", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr and r.stderr.count("\n") == 1


def test_default_target_and_size_change_text() -> None:
    from ckptui.core.units import size_change
    from ckptui.export import default_target

    assert default_target("/runs/a/ckpt_0099.pth", "pth") == "/runs/a/ckpt_0099.slim.pth"
    assert default_target("model.safetensors", "safetensors") == "model.slim.safetensors"
    assert size_change(2 << 30, 406 << 20) == "2.0 GiB → 406.0 MiB, −80 %"  # noqa: RUF001
    assert size_change(100, 100).endswith("±0 %") and size_change(100, 150).endswith("+50 %")


def test_the_export_gets_the_mode_of_a_plainly_created_file(tmp_path: Path) -> None:
    """The temp file renamed into place must not keep mkstemp's 0600: under the usual umask
    the output is readable by the group and others, as `torch.save`'s would be."""
    import os

    src = tmp_path / "src.pth"
    torch.save({"w": torch.ones(4)}, src)
    out = tmp_path / "out.safetensors"
    old = os.umask(0o022)
    try:
        export(make_plan(open_checkpoint(str(src)), keep=[()], fmt="safetensors"), out)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644

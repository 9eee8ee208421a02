"""The safetensors reader's one-pass checks (issue 16): holes and overlaps are found while the
entries go by when the header is in data order (what every writer does), and by a sort when it
is not; both give the same tree and the same one-line errors. A header longer than the first
read is read whole."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptui.core.errors import CorruptFile
from ckptui.formats import open_checkpoint
from ckptui.formats.safetensors import FIRST_READ
from tests.conftest import run_python

from ..conftest import run_cli


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _saved(tmp_path: Path) -> Path:
    tensors = {
        "a": torch.zeros(3, dtype=torch.float32),
        "b": torch.zeros(2, 2, dtype=torch.bfloat16),
        "c": torch.zeros(0, dtype=torch.float32),  # empty: begin == end
        "d": torch.zeros(5, dtype=torch.int8),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def _view(path: Path) -> tuple:
    """Tensor rows, and storages with offsets from the data's start (headers differ in size)."""
    ckpt = open_checkpoint(path)
    rows = sorted((p, t.shape, t.dtype, t.stride, t.storage_key) for p, t in ckpt.tensors())
    start = 8 + ckpt.info["header_bytes"]
    stores = sorted(
        (k, s.dtype, s.nbytes, s.data_offset - start, s.record_nbytes)
        for k, s in ckpt.storages.items()
    )
    return rows, stores


def test_a_header_out_of_data_order_reads_the_same(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    header, data = _split(path)
    names = [k for k in header if k != "__metadata__"]
    assert [header[k]["data_offsets"][0] for k in names] == sorted(
        header[k]["data_offsets"][0] for k in names
    )  # the writer's order is the data's: the check as the entries go by
    shuffled = {k: header[k] for k in reversed(list(header))}
    other = _write(tmp_path / "reversed.safetensors", shuffled, data)
    assert _view(other) == _view(path)


@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "out-of-order"])
def test_holes_and_overlaps_are_one_line_errors(tmp_path: Path, reverse: bool) -> None:
    header, data = _split(_saved(tmp_path))
    order = list(reversed(list(header))) if reverse else list(header)
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    begin, end = header[first]["data_offsets"]
    hole = {k: dict(header[k]) for k in order}
    hole[first]["data_offsets"] = [begin + 4, end + 4]  # 4 bytes nobody owns before it...
    hole[first]["shape"] = header[first]["shape"]
    path = _write(tmp_path / "hole.safetensors", hole, data + b"\0" * 4)
    with pytest.raises(CorruptFile, match="does not start where the previous ends"):
        open_checkpoint(path)
    overlap = {k: dict(header[k]) for k in order}
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    lb, le = header[last]["data_offsets"]
    overlap[last]["data_offsets"] = [lb - 1, le - 1]  # its first byte is the previous one's last
    path = _write(tmp_path / "overlap.safetensors", overlap, data[:-1])
    with pytest.raises(CorruptFile, match="holes or overlaps are invalid"):
        open_checkpoint(path)
    short = _write(tmp_path / "short.safetensors", {k: header[k] for k in order}, data + b"\0")
    with pytest.raises(CorruptFile, match="tensor data ends at"):
        open_checkpoint(short)
    r = run_cli("inspect", str(short))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    n = FIRST_READ // 60 + 100  # ~60 header bytes a tensor: past the first read
    tensors = {f"layer.{i}.weight": torch.full((1,), float(i)) for i in range(n)}
    path = tmp_path / "long.safetensors"
    save_file(tensors, str(path))
    assert struct.unpack_from("<Q", path.read_bytes())[0] > FIRST_READ
    ckpt = open_checkpoint(path)
    assert ckpt.info["header_bytes"] > FIRST_READ
    assert len(ckpt.storages) == n
    st = ckpt.storages[f"layer.{n - 1}.weight"]
    raw = path.read_bytes()
    assert struct.unpack_from("<f", raw, st.data_offset)[0] == float(n - 1)


def test_a_safetensors_folder_loads_no_pickle_reader(tmp_path: Path) -> None:
    """`inspect --json` of a sharded safetensors folder never imports the zip, legacy, tar or DCP
    readers (nor zipfile, tarfile): they load when a file needs them (issue 16, start-up)."""
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"a": torch.zeros(2)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(3)}, str(folder / "model-00002-of-00002.safetensors"))
    index = {
        "metadata": {"total_size": 20},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code = (
        "import io, sys, contextlib, json\n"
        "from ckptui.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main(['inspect', '--json', {str(folder)!r}]) == 0\n"
        "names = ('ckptui.formats.torchzip', 'ckptui.formats.legacy', 'ckptui.formats.nested',\n"
        "         'ckptui.formats.legacy_tar', 'ckptui.formats.dcp.reader', 'zipfile', 'tarfile')\n"
        "bad = [m for m in names if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(len(json.loads(out.getvalue())['tensors']))\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"

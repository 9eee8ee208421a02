"""Storages' local headers read a window at a time (issue 16) give what one read each gives.

`ZipCheckpoint._header` reads small records' headers 64 KiB at a time; the data offsets must be
the ones `zipfile` computes from each record's own local header, and a damaged header among
many must fail with the same one-line message as before.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch

from ckptui.core.errors import CkptError
from ckptui.formats import open_checkpoint, torchzip


def _save(path: Path, sizes: list[int]) -> None:
    torch.save({f"t{i}": torch.arange(n, dtype=torch.float32) for i, n in enumerate(sizes)}, path)


def _true_offsets(path: Path) -> dict[str, int]:
    """Each storage record's first data byte, from its own local header (as zipfile does)."""
    out = {}
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        for zi in zf.infolist():
            if "/data/" in zi.filename:
                n, e = struct.unpack_from("<HH", raw, zi.header_offset + 26)
                out[zi.filename] = zi.header_offset + 30 + n + e
    return out


@pytest.mark.parametrize(
    "sizes",
    [
        [3] * 300,  # many headers in one window
        [5, 70_000, 2, 9, 40_000, 1],  # small and large records mixed: windows and exact reads
        [4_000] * 40,  # records about a window's size apart
    ],
)
def test_data_offsets_are_the_local_headers(tmp_path: Path, sizes: list[int]) -> None:
    path = tmp_path / "m.pt"
    _save(path, sizes)
    ckpt = open_checkpoint(str(path))
    truth = _true_offsets(path)
    got = {st.record: st.data_offset for st in ckpt.storages.values()}
    assert got == truth
    assert len(got) == len(sizes)


def test_fewer_reads_for_small_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.pt"
    _save(path, [3] * 300)
    calls: list[int] = []
    real = torchzip.Source.read_at

    def counting(self: torchzip.Source, offset: int, n: int) -> bytes:
        calls.append(n)
        return real(self, offset, n)

    monkeypatch.setattr(torchzip.Source, "read_at", counting)
    open_checkpoint(str(path))
    assert calls.count(30) < 10  # not one 30-byte read per storage
    assert len(calls) < 40


def test_a_damaged_header_among_many_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    _save(path, [3] * 100)
    with zipfile.ZipFile(path) as zf:
        victim = next(zi for zi in zf.infolist() if zi.filename.endswith("/data/57"))
    raw = bytearray(path.read_bytes())
    raw[victim.header_offset : victim.header_offset + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(CkptError, match=r"record m/data/57 has no local header"):
        open_checkpoint(str(path))

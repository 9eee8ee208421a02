"""Benchmark opening the ~600 MB training checkpoint over local HTTP against downloading it whole.

Usage: python tests/benchmarks/bench_remote.py [--workdir DIR] [--repeat N] [--json]

Run on demand, not under pytest. This script:

1. writes (bench_open's generator, reused when present) the ~600 MB training checkpoint, and
   a copy of it in the legacy format (`_use_new_zipfile_serialization=False`);
2. serves it on 127.0.0.1 with pytest-httpserver and werkzeug's `send_file` (Range -> 206),
   logging every response the server sends;
3. times, each in a fresh child process, interleaved, --repeat times: `ckptui inspect --json URL`
   (what opening a remote checkpoint costs) and a whole download with fsspec's `get_file` (and
   `curl -o` when curl is installed);
   and a weights-only export straight from the URL against the usual way, downloading the file
   whole and then exporting the local copy;
4. prints wall times and the bytes the server sent for each, and the bytes ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

INSPECT = (
    "import sys, json, io, contextlib; from ckptui.cli.main import main; out = io.StringIO()\n"
    "with contextlib.redirect_stdout(out): rc = main(['inspect', '--json', sys.argv[1]])\n"
    "assert rc == 0, rc; doc = json.loads(out.getvalue()); print(doc['bytes_read'])"
)
FSSPEC_GET = "import sys, fsspec; fsspec.filesystem('http').get_file(sys.argv[1], sys.argv[2])"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ckptui-bench")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import bench_open  # a sibling script: its folder is on sys.path
    from pytest_httpserver import HTTPServer
    from werkzeug import Request, Response
    from werkzeug.utils import send_file

    a.workdir.mkdir(parents=True, exist_ok=True)
    src = bench_open.ensure_checkpoint(a.workdir, "small", bench_open.SIZES["small"], 2 << 30)
    assert src is not None
    bench_open.warm(src)
    size = src.stat().st_size
    legacy = _legacy_copy(src, a.workdir / "legacy.pt")
    sent: list[int] = []

    def serving(path: Path) -> Any:
        def handler(request: Request) -> Response:
            resp = send_file(path, request.environ, conditional=True, max_age=None)
            if request.method == "GET":
                sent.append(int(resp.headers.get("Content-Length", 0)))
            return resp

        return handler

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = HTTPServer(threaded=True)
    server.expect_request(f"/{src.name}").respond_with_handler(serving(src))
    server.expect_request(f"/{legacy.name}").respond_with_handler(serving(legacy))
    server.start()
    url = server.url_for(f"/{src.name}")
    env = bench_open.child_env()
    target = a.workdir / "downloaded.pt"
    tools: dict[str, list[str]] = {
        "ckptui inspect --json URL": [sys.executable, "-c", INSPECT, url],
        "fsspec get_file (whole file)": [sys.executable, "-c", FSSPEC_GET, url, str(target)],
        "ckptui inspect --json URL (legacy)": [
            sys.executable, "-c", INSPECT, server.url_for(f"/{legacy.name}"),
        ],
    }  # fmt: skip
    out = a.workdir / "remote-export.safetensors"
    export = [sys.executable, "-m", "ckptui", "export"]
    tools["ckptui export URL (weights)"] = [*export, url, "-o", str(out), "--force", "--json"]
    if shutil.which("curl"):
        tools["curl -o (whole file)"] = ["curl", "-sSf", "-o", str(target), url]
        local = " ".join([*export, str(target), "-o", str(out), "--force", "--json"])
        tools["curl, then export the copy"] = [
            "bash", "-c", f"curl -sSf -o {target} {url} && {local} > /dev/null",
        ]  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    try:
        for name, cmd in tools.items():
            walls, sent_bytes = [], []
            for _ in range(a.repeat):
                del sent[:]
                wall, _ = bench_open.measure(cmd, env)
                walls.append(wall)
                sent_bytes.append(sum(sent))
            results[name] = {
                "wall_s_median": statistics.median(walls),
                "wall_s_min": min(walls),
                "bytes_sent": statistics.median(sent_bytes),
                "requests": len(sent),
            }
    finally:
        server.stop()
        target.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    report = {"file": str(src), "file_bytes": size, "results": results}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{src.name}: {size / 1e6:.0f} MB over http://127.0.0.1 (warm page cache)")
    for name, r in results.items():
        print(
            f"  {name:32} {r['wall_s_median']:7.2f} s  {r['bytes_sent']:>13,.0f} B sent "
            f"({r['bytes_sent'] / size:.5%} of the file, {r['requests']:.0f} GET)"
        )


def _legacy_copy(src: Path, dest: Path) -> Path:
    """The benchmark checkpoint re-saved in the legacy format (once; reused after)."""
    if not dest.exists() or dest.stat().st_mtime < src.stat().st_mtime:
        import torch

        tmp = dest.with_suffix(".tmp")
        torch.save(torch.load(src, weights_only=False), tmp, _use_new_zipfile_serialization=False)
        tmp.replace(dest)
    return dest


if __name__ == "__main__":
    main()

"""Benchmark how the browser feels: first paint, expanding a huge mapping, moving the cursor.

Usage: python tests/benchmarks/bench_ui.py [--repeat N] [--workdir DIR] [--moves N]

Benchmarks run on demand, not under pytest: their figures go into issue notes and are never
asserted in tests, because wall time depends on the machine. One run measures, --repeat times
each, and prints min / median against the targets:

1. First paint (target <= 0.8 s): `python -m ckptui PATH` is spawned in a real pseudo-terminal
   (100x30, set with TIOCSWINSZ) on the ~600 MB checkpoint that bench_open.py writes (built
   with its code if missing); the time is from spawn until the output stream shows the root
   row's summary (`dict · 6 keys`), which only exists once the tree is shown. Then `q` is sent
   and the child reaped. The same is measured in-process with `App.run_test()`: from creating
   the app until the first frame composed while `tree.ckpt is not None`.
2. Expanding a 50 000-key mapping (target <= 0.3 s): `{"model": {f"layer.{i}.weight":
   torch.zeros(1)}}` opened with run_test (100x30), cursor on `model`, then `l`. Timed as
   `await pilot.press("l"); await pilot.pause()`, and also directly: from posting the key
   event until the first frame in which the row is open with its children (what a terminal
   would be sent). Expanding one 1000-key group row inside it is reported the same way.
3. Cursor moves (target <= 20 ms per move): --moves presses of `j` down the open group, with the
   details panel as shipped, and with it stubbed out (tree only). Timed as
   `await pilot.press("j")` in a loop (total / moves, plus process CPU per move), and directly
   (key event posted -> first frame showing the cursor on the next row). Direct keys come as
   fast as frames, like a held key, so the panel follows as shipped for a held key (every
   PANEL_INTERVAL, and when the cursor rests); its cost shows in the move and CPU figures.
4. The panel catching up (target <= 100 ms): from the last of those keys until the first frame
   in which the panel describes the cursor's row; and for single `j` presses, each after the
   cursor rested, key -> cursor frame and key -> panel frame.

5. The module view and the filter on a 100,000-key state dict (`transformer.h.{0..999}.p{0..99}
   .weight`, run_test 100x30): `m` from key to the frame showing the grouped rows (target <=
   0.3 s), once the screen's worker has made them ahead ("warm", what a user meets) and with
   that worker's cache dropped ("cold": the tree groups them in its own worker, showing a
   `grouping…` line meanwhile; timed to that first frame, to the module rows, and the worst
   UI-thread stall between, target <= 100 ms); `m` back to the flat keys; the first `s` by name
   and then by size on the cold run (sorted in a worker: key -> first frame, key -> sorted
   rows, worst stall); and in the filter bar, each typed key to the frame echoing it (target
   <= 100 ms), and the last key to the frame showing the match count (debounced, searched in a
   worker). Run alone with `--only modules`.
6. The browser at 100,000 keys (issue 16), on the same state dict, in-process: the window's
   first frame (header and loading view) and the frame that shows the tree (target <= 1 s),
   the worst UI-thread stall from the first frame until the open and the workers after it
   are done, collapsing and expanding the 100,000-key root (target <= 0.3 s), then `w` and
   `x`, each timed to its screen's first frame and, until its workers are done, the worst
   stall of the UI thread (the longest a 5 ms timer on the event loop came late; target
   <= 100 ms) and the most UI-thread CPU one event-loop callback took (immune to the
   machine's load; see `Stalls`). Run alone with `--only scale`.
Read the pilot figures with their floor: `Pilot.press` itself sleeps in two
`textual._wait.wait_for_idle(0)` calls per key, each at least 20 ms, so no app can press
faster than ~40 ms that way. The floor is measured by pressing an unbound key, and the
"direct" figures, which post the key event and wait on the app's own frame, carry no floor.
run_test is headless: the frame is composed but not written to a terminal, so direct figures
leave out the escape-sequence output that the pty first-paint measurement includes.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import fcntl
import gc
import os
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SIZE = (100, 30)  # columns, rows
AGAIN = 4
"""Later presses of `w` and `x` in section 6, whose median stall is reported."""
WIDE_KEYS = 50_000
GROUP_ROWS = WIDE_KEYS // 1000
PAINT_TARGET_S, EXPAND_TARGET_S, MOVE_TARGET_MS, PANEL_TARGET_MS = 0.8, 0.3, 20.0, 100.0
MODULE_KEYS, TOGGLE_TARGET_S, KEYSTROKE_TARGET_MS = 100_000, 0.3, 100.0
SCALE_PAINT_TARGET_S, STALL_TARGET_MS = 1.0, 100.0  # issue 16's browser at 100,000 keys
MODULES_CODE = (
    "import sys, torch\n"
    "sd = {f'transformer.h.{i // 100}.p{i % 100}.weight': torch.zeros(1)"
    f" for i in range({MODULE_KEYS})}}\n"
    "torch.save(sd, sys.argv[1])\n"
)
REST_MOVES, REST_S = 20, 0.3  # single moves after the cursor has rested REST_S seconds
FLOOR_PRESSES = 100
PTY_TIMEOUT_S = 60.0
FRAME_TIMEOUT_S = 30.0
ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    r"|\x1bP[^\x1b]*\x1b\\"  # DCS
    r"|\x1b[()][0-9A-Za-z]"  # charset
    r"|\x1b[@-Z\\-_=>78]"  # other two-byte escapes
)
WIDE_CODE = (
    "import sys, torch\n"
    f"sd = {{f'layer.{{i}}.weight': torch.zeros(1) for i in range({WIDE_KEYS})}}\n"
    "torch.save({'model': sd}, sys.argv[1])\n"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_wide(workdir: Path) -> Path:
    """The 50 000-key checkpoint, written by torch in a child process (the parent never imports
    torch, so forking the pty child stays cheap)."""
    path = workdir / f"bench_ui_model_{WIDE_KEYS}.pt"
    if path.exists() and path.stat().st_size > 0:
        log(f"reusing {path}")
        return path
    log(f"writing {path} ({WIDE_KEYS:,} one-element tensors) ...")
    tmp = path.with_name(path.name + ".partial")
    subprocess.run([sys.executable, "-c", WIDE_CODE, str(tmp)], check=True)
    tmp.replace(path)
    return path


def ensure_modules(workdir: Path) -> Path:
    """The 100,000-key state dict of section 5, written by torch in a child process."""
    path = workdir / f"bench_ui_modules_{MODULE_KEYS}.pt"
    if path.exists() and path.stat().st_size > 0:
        log(f"reusing {path}")
        return path
    log(f"writing {path} ({MODULE_KEYS:,} one-element tensors) ...")
    tmp = path.with_name(path.name + ".partial")
    subprocess.run([sys.executable, "-c", MODULES_CODE, str(tmp)], check=True)
    tmp.replace(path)
    return path


async def run_modules(
    path: Path, cold: bool, where: dict[str, str] | None = None
) -> dict[str, float]:
    """Section 5: m on, m off, then typing `h.7.p3` into the filter bar, all direct keys."""
    from ckptui.app.app import CkptApp
    from ckptui.app.widgets.ckpt_tree import CkptTree
    from ckptui.app.widgets.filter_bar import FilterBar

    app = CkptApp(str(path))
    frames = Frames(app)
    out: dict[str, float] = {}
    async with app.run_test(size=SIZE) as pilot:
        tree = app.screen.query_one(CkptTree)
        for _ in range(600):  # the open worker, then the module rows it has made ahead
            await app.workers.wait_for_complete()
            await pilot.pause(0.05)
            if tree.ckpt is not None and tree._module_rows:
                break
        tree = app.screen.query_one(CkptTree)
        if cold:
            tree._module_rows = {}  # as if that worker had not run

        def grouped() -> bool:  # the module rows themselves, not the `grouping…` line
            kids = tree.root.children
            return tree.module_view and bool(kids) and getattr(kids[0].data, "module", None)

        stalls = Stalls()
        stalls.start()
        fut = frames.watch(grouped)
        t0 = time.perf_counter()
        out["toggle_first_frame"] = await press_direct(
            app, frames, "m", lambda: tree.module_view and len(tree.root.children) == 1
        )
        out["toggle_on"] = await within(fut, "module rows") - t0
        out["toggle_stall_ms"] = 1000 * stalls.stop()
        out["top_rows"] = float(len(tree.root.children))
        out["toggle_off"] = await press_direct(
            app, frames, "m", lambda: not tree.module_view and len(tree.root.children) == 100
        )
        if cold:  # the first sort in each order (a fresh file: nothing sorted yet)
            for order, name in (("name", "sort_name"), ("size", "sort_size")):
                stalls.start()
                fut = frames.watch(lambda o=order: tree.order == o and tree.root.is_expanded)
                t0 = time.perf_counter()
                out[f"{name}_first_frame"] = await press_direct(app, frames, "s", lambda: True)
                out[name] = await within(fut, f"sorted by {order}") - t0
                await app.workers.wait_for_complete()
                out[f"{name}_stall_ms"] = 1000 * stalls.stop()
        await press_direct(app, frames, "slash", lambda: app.screen.query_one(FilterBar).display)
        bar = app.screen.query_one(FilterBar)
        count = app.screen.query_one("#filter-count")
        echoes = []
        typed = ""
        last = time.perf_counter()
        stalls.start()
        for ch in "h.7.p3":
            typed += ch
            text = typed
            last = time.perf_counter()
            echoes.append(await press_direct(app, frames, ch, lambda t=text: bar.value == t))
        out["keystroke_ms"] = 1000 * statistics.mean(echoes)
        out["keystroke_max_ms"] = 1000 * max(echoes)
        out["keystroke_stall"] = stalls.stop()
        out["keystroke_stall_cpu"] = stalls.worst_cpu
        if where is not None:
            where["typing"] = stalls.worst_where
        fut = frames.watch(lambda: "match" in str(count.render()) and tree.filtered)
        out["filtered_ms"] = 1000 * (await within(fut, "filter result") - last)
    return out


class Stalls:
    """The longest the event loop (the UI thread) went without running a 5 ms timer: a frame
    or a key cannot be handled sooner than that, whatever the workers do.

    Also `worst_cpu`: the most UI-thread CPU time (`time.thread_time`) one event-loop callback
    took meanwhile. On a loaded machine the wall-clock stall includes the time the OS gave
    other processes; the CPU figure does not (nor the GIL waits on the app's own workers,
    which the wall figure does include). Read the two together.

    And `worst_where`, which callback that was: the loop's callback names only Textual's
    message-pump task, so a sampling thread grabs the UI thread's stack every 5 ms while one
    callback has run for over PROBE_AFTER, and the callback is named by its samples' most
    common handler (the outermost ckptui frame: what Textual dispatched to) and innermost
    ckptui frame, plus the cyclic GC's time inside it (a collection is paid by whichever
    callback allocates when it falls due). `gc_worst` and `gc_long`: the longest collection
    on any thread, and how many took GC_LONG or more (a worker's holds the GIL, the UI thread
    waits through it)."""

    TICK = 0.005
    PROBE_AFTER = 0.02
    GC_LONG = 0.01
    SAMPLE = True
    """False: no sampling thread (to check that it does not change what it measures)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_cpu = 0.0
        self.worst_where = ""
        self._task: asyncio.Task[None] | None = None
        self._run: Callable[..., Any] | None = None
        self._running: tuple[int, float] | None = None  # (callback number, perf_counter start)
        self._samples: list[tuple[int, list[tuple[str, str]]]] = []
        self._gc_s = 0.0
        self._gc_started: dict[int, float] = {}
        self.gc_worst = 0.0
        """The longest collection of the cyclic GC meanwhile, on any thread (seconds)."""
        self.gc_long = 0
        """Collections meanwhile, on any thread, of GC_LONG or more."""
        self._gc_text = ""
        self._sampler: threading.Thread | None = None
        self._stop_sampler = threading.Event()

    async def _watch(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.TICK)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - self.TICK)
            last = now

    def _sample(self, ui_thread: int) -> None:
        """Thread: the UI thread's stack, while one callback runs long."""
        while self.SAMPLE and not self._stop_sampler.wait(self.TICK):
            running = self._running
            if running is None or time.perf_counter() - running[1] < self.PROBE_AFTER:
                continue
            frame = sys._current_frames().get(ui_thread)
            stack = []
            while frame is not None:
                stack.append((frame.f_code.co_filename, frame.f_code.co_qualname))
                frame = frame.f_back
            self._samples.append((running[0], stack[::-1]))  # root first

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started.pop(ident, time.perf_counter())
        # any thread's collection holds the GIL, so the UI thread waits through it too
        self.gc_worst = max(self.gc_worst, took)
        self.gc_long += took >= self.GC_LONG
        if ident != threading.main_thread().ident or self._running is None:
            return
        self._gc_s += took
        if took >= self.PROBE_AFTER:  # which allocation paid for it, and what it walked
            frame = sys._getframe(1)
            mine = []
            while frame is not None:
                if "ckptui" in frame.f_code.co_filename and "bench" not in frame.f_code.co_filename:
                    mine.append(frame.f_code.co_qualname)
                frame = frame.f_back
            where = mine[0] if mine else "Textual"
            self._gc_text = (
                f"gen{info['generation']} {1000 * took:.0f} ms in {where}"
                f" ({gc.get_stats()[info['generation']]['collections']} so far)"
            )

    def _describe(self, number: int, handle: asyncio.Handle) -> str:
        stacks = [stack for n, stack in self._samples if n == number]
        gc_ms = f", of which gc {1000 * self._gc_s:.0f} ms" if self._gc_s >= 0.001 else ""
        if self._gc_text:
            gc_ms += f" ({self._gc_text})"
        if not stacks:  # too short to sample: the loop's own name for it
            return f"{getattr(handle, '_callback', handle)!r}{gc_ms}"[:160]
        handlers: dict[str, int] = {}
        for stack in stacks:
            mine = [q for f, q in stack if "ckptui" in f and "benchmarks" not in f]
            key = f"{mine[0]} ... {mine[-1]}" if mine else f"(no ckptui frame) {stack[-1][1]}"
            if mine and stack[-1][1] != mine[-1]:
                key += f" -> {Path(stack[-1][0]).stem}:{stack[-1][1]}"
            handlers[key] = handlers.get(key, 0) + 1
        top = sorted(handlers.items(), key=lambda kv: -kv[1])[:2]
        return "; ".join(f"{k} ({n}/{len(stacks)} samples)" for k, n in top) + gc_ms

    def start(self) -> None:
        self.worst = self.worst_cpu = self.gc_worst = 0.0
        self.worst_where = ""
        self.gc_long = 0
        self._task = asyncio.get_running_loop().create_task(self._watch())
        run = self._run = asyncio.events.Handle._run
        counter = iter(range(1 << 62))

        def timed(handle: asyncio.Handle) -> None:  # every callback the loop runs
            number = next(counter)
            self._gc_s, self._gc_text = 0.0, ""
            cpu = time.thread_time()
            self._running = (number, time.perf_counter())
            try:
                run(handle)
            finally:
                self._running = None
                took = time.thread_time() - cpu
                if took > self.worst_cpu:
                    self.worst_cpu = took
                    self.worst_where = f"{1000 * took:.0f} ms: {self._describe(number, handle)}"
                self._samples = [s for s in self._samples if s[0] > number]

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        gc.callbacks.append(self._gc)
        self._stop_sampler.clear()
        self._sampler = threading.Thread(
            target=self._sample, args=(threading.get_ident(),), daemon=True
        )
        self._sampler.start()

    def stop(self) -> float:
        """The worst stall since `start`, in seconds."""
        assert self._task is not None and self._run is not None and self._sampler is not None
        self._task.cancel()
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]
        gc.callbacks.remove(self._gc)
        self._stop_sampler.set()
        self._sampler.join()
        return self.worst


async def run_scale(path: Path, where: dict[str, str]) -> dict[str, float]:
    """Section 6 on the 100,000-key state dict: first paint, collapsing and expanding the
    100,000-key root, then `w` and `x` until their workers are done, each with the worst stall
    of the UI thread meanwhile. `where` gets, for each stage, the slowest callback's name
    (`Stalls.worst_where`)."""
    from ckptui.app.app import CkptApp
    from ckptui.app.screens.browse import BrowseScreen
    from ckptui.app.screens.export import ExportScreen
    from ckptui.app.screens.why import WhyScreen
    from ckptui.app.widgets.ckpt_tree import CkptTree

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    app = CkptApp(str(path))
    frames = Frames(app)
    stalls = Stalls()

    def shown() -> bool:
        screen = app.screen
        return isinstance(screen, BrowseScreen) and screen.query_one(CkptTree).ckpt is not None

    window = frames.watch(lambda: isinstance(app.screen, BrowseScreen))
    painted = frames.watch(shown)
    async with app.run_test(size=SIZE) as pilot:
        out["window_painted"] = await within(window, "the window's first frame") - t0
        stalls.start()  # the open, showing the tree, then the workers after it
        # opening 100,000 tensors takes seconds (more on a loaded machine)
        out["first_paint"] = await within(painted, "first paint", PTY_TIMEOUT_S * 3) - t0
        await app.workers.wait_for_complete()
        await pilot.pause()
        out["open_stall"] = stalls.stop()
        out["open_stall_cpu"] = stalls.worst_cpu
        out["open_gc"], out["open_gc_long"] = stalls.gc_worst, stalls.gc_long
        where["open"] = stalls.worst_where
        tree = app.screen.query_one(CkptTree)
        rows = len(tree.root.children)
        await press_direct(app, frames, "h", lambda: not tree.root.is_expanded)
        stalls.start()
        out["expand_root"] = await press_direct(
            app, frames, "l", lambda: tree.root.is_expanded and len(tree.root.children) == rows
        )
        out["expand_stall"] = stalls.stop()
        out["expand_stall_cpu"] = stalls.worst_cpu
        where["expand"] = stalls.worst_where
        for key, screen_type, name in (("w", WhyScreen, "why"), ("x", ExportScreen, "export")):
            stalls.start()
            out[f"{name}_shown"] = await press_direct(
                app, frames, key, lambda t=screen_type: isinstance(app.screen, t)
            )
            await app.workers.wait_for_complete()
            await pilot.pause()
            out[f"{name}_stall"] = stalls.stop()
            out[f"{name}_stall_cpu"] = stalls.worst_cpu
            out[f"{name}_gc"], out[f"{name}_gc_long"] = stalls.gc_worst, stalls.gc_long
            where[name] = stalls.worst_where
            await pilot.press("escape")
            await pilot.pause()
            await app.workers.wait_for_complete()
        # A single press's stall swings by hundreds of ms on a loaded 2-core machine: the
        # median of AGAIN more presses (w shows its cached breakdown, x plans again)
        for key, screen_type, name in (("w", WhyScreen, "why"), ("x", ExportScreen, "export")):
            again, again_cpu = [], []
            for _ in range(AGAIN):
                stalls.start()
                await press_direct(
                    app, frames, key, lambda t=screen_type: isinstance(app.screen, t)
                )
                await app.workers.wait_for_complete()
                await pilot.pause()
                again.append(stalls.stop())
                again_cpu.append(stalls.worst_cpu)
                where[f"{name} again"] = stalls.worst_where
                await pilot.press("escape")
                await pilot.pause()
                await app.workers.wait_for_complete()
            out[f"{name}_again_stall"] = statistics.median(again)
            out[f"{name}_again_stall_cpu"] = statistics.median(again_cpu)
    return out


def scale_section(workdir: Path, repeat: int) -> list[Row]:
    """Section 6's rows."""
    import bench_open

    path = ensure_modules(workdir)
    bench_open.warm(path)
    log(f"first paint, expand, w and x on {MODULE_KEYS:,} keys ...")
    asyncio.run(run_scale(path, {}))  # warm-up: imports, CSS parse
    wheres: list[dict[str, str]] = [{} for _ in range(repeat)]
    runs = [asyncio.run(run_scale(path, where)) for where in wheres]
    for i, where in enumerate(wheres, 1):
        print(f"run {i}: the callback with the most UI-thread CPU, per stage")
        for stage, text in where.items():
            print(f"  {stage}: {text}")
    ms = 1000.0
    return [
        Row("100k keys: window painted (header, loading view)", "s",
            [r["window_painted"] for r in runs], SCALE_PAINT_TARGET_S),
        Row("100k keys: tree shown, run_test App() -> tree", "s",
            [r["first_paint"] for r in runs], SCALE_PAINT_TARGET_S),
        Row("100k keys: painted -> settled, worst UI-thread stall", "ms",
            [ms * r["open_stall"] for r in runs], STALL_TARGET_MS),
        Row("  same, most UI-thread CPU in one callback", "ms",
            [ms * r["open_stall_cpu"] for r in runs], STALL_TARGET_MS),
        Row("  same, longest GC collection (any thread)", "ms", [ms * r["open_gc"] for r in runs]),
        Row("  same, GC collections of 10 ms or more", "n", [r["open_gc_long"] for r in runs]),
        Row("100k keys: expand the root: key -> frame", "s",
            [r["expand_root"] for r in runs], EXPAND_TARGET_S),
        Row("100k keys: expand, worst UI-thread stall", "ms",
            [ms * r["expand_stall"] for r in runs]),
        Row("  same, most UI-thread CPU in one callback", "ms",
            [ms * r["expand_stall_cpu"] for r in runs]),
        Row("100k keys: w -> why screen frame", "ms", [ms * r["why_shown"] for r in runs]),
        Row("100k keys: w, worst UI-thread stall until done", "ms",
            [ms * r["why_stall"] for r in runs], STALL_TARGET_MS),
        Row("  same, most UI-thread CPU in one callback", "ms",
            [ms * r["why_stall_cpu"] for r in runs], STALL_TARGET_MS),
        Row("  same, longest GC collection (any thread)", "ms", [ms * r["why_gc"] for r in runs]),
        Row("  same, GC collections of 10 ms or more", "n", [r["why_gc_long"] for r in runs]),
        Row("100k keys: x -> export dialog frame", "ms", [ms * r["export_shown"] for r in runs]),
        Row("100k keys: x, worst UI-thread stall until done", "ms",
            [ms * r["export_stall"] for r in runs], STALL_TARGET_MS),
        Row("  same, most UI-thread CPU in one callback", "ms",
            [ms * r["export_stall_cpu"] for r in runs], STALL_TARGET_MS),
        Row("  same, longest GC collection (any thread)", "ms",
            [ms * r["export_gc"] for r in runs]),
        Row("  same, GC collections of 10 ms or more", "n", [r["export_gc_long"] for r in runs]),
        Row(f"100k keys: w again, median of {AGAIN} stalls", "ms",
            [ms * r["why_again_stall"] for r in runs], STALL_TARGET_MS),
        Row("  same, most UI-thread CPU in one callback", "ms",
            [ms * r["why_again_stall_cpu"] for r in runs], STALL_TARGET_MS),
        Row(f"100k keys: x again, median of {AGAIN} stalls", "ms",
            [ms * r["export_again_stall"] for r in runs], STALL_TARGET_MS),
        Row("  same, most UI-thread CPU in one callback", "ms",
            [ms * r["export_again_stall_cpu"] for r in runs], STALL_TARGET_MS),
    ]  # fmt: skip


# -- 1. first paint in a pseudo-terminal --------------------------------------------------------
def root_marker(path: Path) -> str:
    """What the root row shows only once the tree is there: `dict · 6 keys`."""
    from ckptui.analysis.index import summary
    from ckptui.formats import open_checkpoint

    return " · ".join(summary(open_checkpoint(str(path)).root).split(" · ")[:2])


def pty_env(bench_open: ModuleType) -> dict[str, str]:
    env = bench_open.child_env()
    env["TERM"] = "xterm-256color"
    env["COLORTERM"] = "truecolor"
    for name in ("COLUMNS", "LINES"):
        env.pop(name, None)
    for name in [k for k in env if k.startswith("TEXTUAL")]:
        env.pop(name)
    return env


def pty_first_paint(path: Path, marker: str, env: dict[str, str]) -> float:
    """Spawn `python -m ckptui PATH` in a pty; seconds until `marker` is on screen."""
    import pty

    argv = [sys.executable, "-m", "ckptui", str(path)]
    winsize = struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0)
    t0 = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # child: size the terminal before Textual asks for it, then exec
        try:
            fcntl.ioctl(sys.stdout.fileno(), termios.TIOCSWINSZ, winsize)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    raw = ""
    elapsed: float | None = None
    try:
        deadline = t0 + PTY_TIMEOUT_S
        while elapsed is None and time.perf_counter() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                break
            now = time.perf_counter()
            raw += decoder.decode(chunk)
            if marker in ANSI.sub("", raw):
                elapsed = now - t0
        if elapsed is None:
            tail = ANSI.sub("", raw)[-1500:]
            raise RuntimeError(f"{marker!r} never appeared on the pty; screen text:\n{tail}")
        os.write(fd, b"q")
        quit_by = time.perf_counter() + 10
        while pid and time.perf_counter() < quit_by:  # drain the terminal until the child exits
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    os.read(fd, 1 << 16)
                except OSError:  # EIO: the terminal is closed; the child is exiting
                    time.sleep(0.01)
            if os.waitpid(pid, os.WNOHANG)[0]:
                pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            log("  (child did not quit on q within 10 s; killed)")
        os.close(fd)
    return elapsed


def import_time(env: dict[str, str]) -> float:
    """Wall seconds for a fresh interpreter to import the app (the part of first paint that is
    not opening the file)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ckptui.app.app"], env=env, check=True)
    return time.perf_counter() - t0


# -- in-process helpers ----------------------------------------------------------------------
class Frames:
    """Wraps `app._display` (called with each composed frame, headless or not) so a benchmark
    can await the first frame after which a condition holds."""

    def __init__(self, app: Any) -> None:
        self._display = app._display
        app._display = self._hook
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[float]]] = []

    def _hook(self, screen: Any, renderable: Any) -> None:
        self._display(screen, renderable)
        if renderable is None or not self._waiters:
            return
        now = time.perf_counter()
        for item in list(self._waiters):
            check, fut = item
            if fut.done():
                self._waiters.remove(item)
            elif check():
                fut.set_result(now)
                self._waiters.remove(item)

    def watch(self, check: Callable[[], bool]) -> asyncio.Future[float]:
        """A future set to the time of the first frame composed while check() is true."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append((check, fut))
        return fut


async def within(fut: Awaitable[float], what: str, timeout: float = FRAME_TIMEOUT_S) -> float:
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise RuntimeError(f"no frame within {timeout} s: {what}") from None


def post_key(app: Any, key: str) -> None:
    """What Pilot.press does for one key, without its idle waits."""
    from textual import events

    event = events.Key(key, key if len(key) == 1 else None)
    event.set_sender(app)
    app._driver.send_message(event)


async def press_direct(app: Any, frames: Frames, key: str, check: Callable[[], bool]) -> float:
    """Seconds from posting `key` until the first frame after which check() holds."""
    fut = frames.watch(check)
    t0 = time.perf_counter()
    post_key(app, key)
    return await within(fut, f"key {key!r}") - t0


async def run_first_paint_in_process(path: Path) -> float:
    from ckptui.app.app import CkptApp
    from ckptui.app.screens.browse import BrowseScreen
    from ckptui.app.widgets.ckpt_tree import CkptTree

    t0 = time.perf_counter()
    app = CkptApp(str(path))
    frames = Frames(app)

    def shown() -> bool:
        screen = app.screen
        return isinstance(screen, BrowseScreen) and screen.query_one(CkptTree).ckpt is not None

    painted = frames.watch(shown)
    async with app.run_test(size=SIZE):
        t = await within(painted, "first paint")
    return t - t0


@dataclass
class WideRun:
    """One app on the 50 000-key checkpoint: expand model, expand a group, move the cursor."""

    expand_model: float = 0.0
    expand_group: float = 0.0
    move_wall_ms: float = 0.0
    move_cpu_ms: float = 0.0
    floor_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


async def run_wide(path: Path, moves: int, direct: bool, details: bool) -> WideRun:
    """Open the wide checkpoint and time expand + cursor moves, via pilot or direct events."""
    from ckptui.app.app import CkptApp
    from ckptui.app.widgets.ckpt_tree import CkptTree
    from ckptui.app.widgets.detail import DetailPanel

    app = CkptApp(str(path))
    frames = Frames(app)
    out = WideRun()
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        tree = app.screen.query_one(CkptTree)
        panel = app.screen.query_one(DetailPanel)
        assert tree.ckpt is not None
        await pilot.press("j")
        model = tree.cursor_node
        assert model is not None and model.data is not None and model.data.path == ("model",)

        def model_open() -> bool:
            return model.is_expanded and len(model.children) == GROUP_ROWS

        if direct:
            out.expand_model = await press_direct(app, frames, "l", model_open)
        else:
            t0 = time.perf_counter()
            await pilot.press("l")
            await pilot.pause()
            out.expand_model = time.perf_counter() - t0
        await pilot.pause()
        assert model_open(), "model did not open"

        await pilot.press("j")
        group = tree.cursor_node
        assert group is not None and group.data is not None and group.data.group == (0, 1000)

        def group_open() -> bool:
            return group.is_expanded and len(group.children) == 1000

        if direct:
            out.expand_group = await press_direct(app, frames, "l", group_open)
        else:
            t0 = time.perf_counter()
            await pilot.press("l")
            await pilot.pause()
            out.expand_group = time.perf_counter() - t0
        await pilot.pause()
        assert group_open(), "group did not open"
        await app.workers.wait_for_complete()

        if not details:

            def no_details(entry: Any) -> None:
                return None

            panel.show = no_details  # tree only: the screen's highlight handler calls this
        if not direct:  # the floor: pilot.press of a key nothing is bound to
            before = tree.cursor_line
            t0 = time.perf_counter()
            for _ in range(FLOOR_PRESSES):
                await pilot.press("f19")
            out.floor_ms = 1000 * (time.perf_counter() - t0) / FLOOR_PRESSES
            assert tree.cursor_line == before

        def on_line(line: int) -> Callable[[], bool]:
            return lambda: tree.cursor_line == line

        def described(line: int) -> Callable[[], bool]:
            """The cursor on `line` and the panel describing that row."""

            def check() -> bool:
                node = tree.cursor_node
                return tree.cursor_line == line and node is not None and panel.entry is node.data

            return check

        start = tree.cursor_line
        cpu0, t0 = time.process_time(), time.perf_counter()
        if direct:
            latencies = []
            caught_up = frames.watch(described(start + moves))
            last_key = 0.0
            for i in range(1, moves + 1):
                last_key = time.perf_counter()
                latencies.append(await press_direct(app, frames, "j", on_line(start + i)))
            out.extra["move_p95_ms"] = 1000 * statistics.quantiles(latencies, n=20)[-1]
            out.extra["move_max_ms"] = 1000 * max(latencies)
        else:
            for _ in range(moves):
                await pilot.press("j")
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if direct and details:  # the panel follows the held key, and catches up when it stops
            lag = await within(caught_up, "panel catching up after the last move") - last_key
            out.extra["panel_lag_ms"] = 1000 * lag
        await pilot.pause()
        assert tree.cursor_line == start + moves, (tree.cursor_line, start, moves)
        out.move_wall_ms = 1000 * wall / moves
        out.move_cpu_ms = 1000 * cpu / moves
        await app.workers.wait_for_complete()
        if direct and details:  # single moves, each after the cursor has rested
            cursor_ms, panel_ms = [], []
            for _ in range(REST_MOVES):
                await asyncio.sleep(REST_S)
                line = tree.cursor_line + 1
                shown = frames.watch(described(line))
                t_key = time.perf_counter()
                cursor_ms.append(1000 * await press_direct(app, frames, "j", on_line(line)))
                panel_ms.append(1000 * (await within(shown, "panel after a single move") - t_key))
            out.extra["rest_cursor_ms"] = statistics.mean(cursor_ms)
            out.extra["rest_panel_ms"] = statistics.mean(panel_ms)
            out.extra["rest_panel_max_ms"] = max(panel_ms)
            await app.workers.wait_for_complete()
    return out


# -- report ------------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    unit: str  # "s" or "ms"
    samples: list[float]
    target: float | None = None

    def cells(self) -> tuple[str, str, str, str]:
        fmt = "{:.3f}" if self.unit == "s" else "{:.1f}"
        lo, med = min(self.samples), statistics.median(self.samples)
        if self.target is None:
            return fmt.format(lo), fmt.format(med), "", ""
        verdict = "OK" if med <= self.target else "MISS"
        return fmt.format(lo), fmt.format(med), f"<= {fmt.format(self.target)}", verdict


def print_table(rows: list[Row]) -> None:
    width = max(len(r.label) for r in rows)
    print(f"{'measurement':<{width}}  {'unit':<4} {'min':>8} {'median':>8} {'target':>10}")
    for r in rows:
        lo, med, target, verdict = r.cells()
        print(f"{r.label:<{width}}  {r.unit:<4} {lo:>8} {med:>8} {target:>10} {verdict}")


def modules_section(workdir: Path, repeat: int) -> list[Row]:
    """Section 5's rows."""
    import bench_open

    path = ensure_modules(workdir)
    bench_open.warm(path)
    log(f"module view and filter on {MODULE_KEYS:,} keys ...")
    asyncio.run(run_modules(path, cold=False))  # warm-up: imports, CSS parse
    warm = [asyncio.run(run_modules(path, cold=False)) for _ in range(repeat)]
    cold = [asyncio.run(run_modules(path, cold=True)) for _ in range(repeat)]
    return [
        Row("m on, 100k keys, rows made ahead: key -> frame", "s",
            [r["toggle_on"] for r in warm], TOGGLE_TARGET_S),
        Row("m on, 100k keys, cold (grouped in a worker): key -> module rows", "s",
            [r["toggle_on"] for r in cold]),
        Row("m on, cold: key -> first frame (`grouping…` line)", "s",
            [r["toggle_first_frame"] for r in cold], TOGGLE_TARGET_S),
        Row("m on, cold: worst UI-thread stall until the rows show", "ms",
            [r["toggle_stall_ms"] for r in cold], STALL_TARGET_MS),
        Row("m off, back to 100k flat keys: key -> frame", "s", [r["toggle_off"] for r in warm]),
        Row("first s (by name), 100k keys: key -> first frame", "s",
            [r["sort_name_first_frame"] for r in cold], TOGGLE_TARGET_S),
        Row("first s (by name), 100k keys: key -> sorted rows", "s",
            [r["sort_name"] for r in cold]),
        Row("first s (by name): worst UI-thread stall", "ms",
            [r["sort_name_stall_ms"] for r in cold], STALL_TARGET_MS),
        Row("first s (by size), 100k keys: key -> sorted rows", "s",
            [r["sort_size"] for r in cold]),
        Row("first s (by size): worst UI-thread stall", "ms",
            [r["sort_size_stall_ms"] for r in cold], STALL_TARGET_MS),
        Row("filter, 100k keys: typed key -> echo frame, mean", "ms",
            [r["keystroke_ms"] for r in warm + cold], KEYSTROKE_TARGET_MS),
        Row("filter, 100k keys: typed key -> echo frame, max", "ms",
            [r["keystroke_max_ms"] for r in warm + cold], KEYSTROKE_TARGET_MS),
        Row("filter, 100k keys: last key -> count + rows frame", "ms",
            [r["filtered_ms"] for r in warm + cold]),
        Row("filter, 100k keys: worst UI-thread stall while typing", "ms",
            [1000 * r["keystroke_stall"] for r in warm + cold], STALL_TARGET_MS),
        Row("  same, most UI-thread CPU in one callback", "ms",
            [1000 * r["keystroke_stall_cpu"] for r in warm + cold], STALL_TARGET_MS),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(tempfile.gettempdir()) / "ckptui-bench"
    ap.add_argument("--workdir", type=Path, default=default_dir, help="(default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    ap.add_argument("--moves", type=int, default=1000, help="cursor moves per run (default 1000)")
    ap.add_argument(
        "--only", choices=["all", "modules", "scale"], default="all", help="(default: all)"
    )
    a = ap.parse_args()
    if a.repeat < 1 or a.moves < 20:
        ap.error("--repeat must be >= 1 and --moves >= 20")
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.only == "scale":
        print(
            f"{a.repeat} run(s) each; terminal {SIZE[0]}x{SIZE[1]}; python {sys.version.split()[0]}"
        )
        print_table(scale_section(a.workdir, a.repeat))
        return
    module_rows = modules_section(a.workdir, a.repeat)
    if a.only == "modules":
        print(
            f"{a.repeat} run(s) each; terminal {SIZE[0]}x{SIZE[1]}; python {sys.version.split()[0]}"
        )
        print_table(module_rows)
        return
    module_rows += scale_section(a.workdir, a.repeat)

    import bench_open  # a sibling script: its folder is on sys.path

    small = bench_open.ensure_checkpoint(a.workdir, "small", bench_open.SIZES["small"], 2**30)
    if small is None:
        sys.exit("no room for the ~600 MB benchmark checkpoint")
    wide = ensure_wide(a.workdir)
    bench_open.warm(small)
    bench_open.warm(wide)
    marker = root_marker(small)
    env = pty_env(bench_open)

    # Pty runs first, while this process has no threads (it forks).
    log(f"first paint in a {SIZE[0]}x{SIZE[1]} pty, waiting for {marker!r} (1 warm-up) ...")
    pty_first_paint(small, marker, env)
    paint_pty = [pty_first_paint(small, marker, env) for _ in range(a.repeat)]
    imports = [import_time(env) for _ in range(a.repeat)]

    log("first paint in-process (run_test) ...")
    asyncio.run(run_first_paint_in_process(small))  # warm-up: imports, CSS parse
    paint_inproc = [asyncio.run(run_first_paint_in_process(small)) for _ in range(a.repeat)]

    runs: dict[tuple[bool, bool], list[WideRun]] = {}
    for direct in (True, False):
        for details in (True, False):
            how = "direct" if direct else "pilot"
            what = "with details panel" if details else "tree only"
            log(f"{WIDE_KEYS:,}-key mapping, {how}, {what}: {a.repeat} x {a.moves} moves ...")
            runs[direct, details] = [
                asyncio.run(run_wide(wide, a.moves, direct, details)) for _ in range(a.repeat)
            ]

    def col(direct: bool, details: bool, name: str, scale: float = 1.0) -> list[float]:
        return [scale * getattr(r, name) for r in runs[direct, details]]

    def both(direct: bool, name: str) -> list[float]:
        return col(direct, True, name) + col(direct, False, name)

    ms = 1000.0
    rows = [
        Row("first paint: pty, `python -m ckptui` spawn -> tree", "s", paint_pty, PAINT_TARGET_S),
        Row("  of which: fresh python importing the app", "s", imports),
        Row("first paint: run_test, App() -> frame with tree", "s", paint_inproc),
        Row(
            "expand 50k-key model: direct key -> frame",
            "s",
            both(True, "expand_model"),
            EXPAND_TARGET_S,
        ),
        Row(
            "expand 50k-key model: pilot press(l) + pause()",
            "s",
            both(False, "expand_model"),
            EXPAND_TARGET_S,
        ),
        Row("expand 1000-key group: direct key -> frame", "ms", both(True, "expand_group"), None),
        Row("expand 1000-key group: pilot press(l) + pause()", "ms", both(False, "expand_group")),
    ]
    for row in rows[-2:]:
        row.samples = [ms * s for s in row.samples]
    for details, what in ((True, "with details"), (False, "tree only")):
        rows += [
            Row(f"move j, {what}: direct key -> frame, mean", "ms",
                col(True, details, "move_wall_ms"), MOVE_TARGET_MS),
            Row(f"move j, {what}: direct, p95", "ms",
                [r.extra["move_p95_ms"] for r in runs[True, details]]),
            Row(f"move j, {what}: direct, CPU per move", "ms", col(True, details, "move_cpu_ms")),
            Row(f"move j, {what}: pilot.press wall per move", "ms",
                col(False, details, "move_wall_ms"), MOVE_TARGET_MS),
            Row(f"move j, {what}: pilot, CPU per move", "ms", col(False, details, "move_cpu_ms")),
        ]  # fmt: skip
    rows += [
        Row("panel catches up after the last move (held j)", "ms",
            [r.extra["panel_lag_ms"] for r in runs[True, True]], PANEL_TARGET_MS),
        Row("single j at rest: key -> cursor frame", "ms",
            [r.extra["rest_cursor_ms"] for r in runs[True, True]], MOVE_TARGET_MS),
        Row("single j at rest: key -> panel frame, mean", "ms",
            [r.extra["rest_panel_ms"] for r in runs[True, True]], PANEL_TARGET_MS),
        Row("single j at rest: key -> panel frame, max", "ms",
            [r.extra["rest_panel_max_ms"] for r in runs[True, True]]),
    ]  # fmt: skip
    rows.append(Row("pilot.press floor (unbound key f19)", "ms", both(False, "floor_ms")))
    rows += module_rows
    print(
        f"{a.repeat} run(s) each; {a.moves} cursor moves per run; terminal {SIZE[0]}x{SIZE[1]};"
        f" python {sys.version.split()[0]}; first paint on {small.name}"
        f" ({small.stat().st_size / 1e6:.0f} MB, warm page cache)"
    )
    print_table(rows)
    print(
        f"targets: first paint (pty) <= {PAINT_TARGET_S} s; expand 50k-key mapping <="
        f" {EXPAND_TARGET_S} s; cursor move <= {MOVE_TARGET_MS:.0f} ms. pilot rows include"
        " Pilot.press's own idle waits (see the floor row); direct rows do not. run_test is"
        " headless: frames are composed but not written to a terminal."
    )


if __name__ == "__main__":
    main()

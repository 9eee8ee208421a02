"""Provides WhyScreen (`w`): where the file's bytes went, as bars, and what could be dropped.

The breakdown (`sizes.breakdown`, metadata only) is computed in a worker and shown at once; the
search for identical tensors (`duplicates.find_duplicates`, which reads tensor data) follows in
a second worker with a progress bar, and adds its findings when done. Enter on a row or finding
that names a subtree closes the screen with that path, and the browser puts its cursor there.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import OptionList, ProgressBar, Static, Tree
from textual.widgets.option_list import Option
from textual.widgets.tree import TreeNode
from textual.worker import Worker, WorkerState, get_current_worker

from ckptui.analysis.roles import ROLE_LABELS
from ckptui.analysis.sizes.breakdown import Breakdown, Prefix
from ckptui.analysis.sizes.duplicates import duplicates_of, find_duplicates, skip_reason
from ckptui.analysis.sizes.findings import SizeFinding
from ckptui.analysis.sizes.folder import breakdown_of, tree_path
from ckptui.app.widgets.bar_tree import BarRows, BarTree, opened_state
from ckptui.app.widgets.keys_footer import KeysFooter
from ckptui.core.bulk import gc_keep, gc_paused_call
from ckptui.core.cancel import Cancelled, interruptible
from ckptui.core.keypath import path_text, show_path
from ckptui.core.tree import Checkpoint, KeyPath
from ckptui.core.units import kind_words, printable, size
from ckptui.export.size import exported_size
from ckptui.report.why import rest_rows

TOP_KEYS = 50
"""Top-level keys listed before `… N more`."""
MAX_PREFIX_CHILDREN = 200
PROGRESS_INTERVAL = 0.1


class FindingList(OptionList):
    """The findings, with vim keys."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "first", "First", show=False),
        Binding("G", "last", "Last", show=False),
    ]


class WhyCache:
    """The breakdown of one opened checkpoint, kept while the browser stays open."""

    def __init__(self) -> None:
        self.breakdown: Breakdown | None = None
        self.files: list[tuple[str, Checkpoint, Breakdown]] = []
        """A folder's checkpoint files with their own breakdowns, searched one by one."""
        self.duplicates_done = False


class WhyScreen(Screen[KeyPath | None]):
    """The size breakdown: headline, groupings as bars, findings."""

    BINDINGS = [
        Binding("escape,w", "close", "Back to tree"),
        Binding("enter", "jump", "Show in tree", show=True),
        Binding("tab", "app.focus_next", "Groups/findings", show=True),
    ]

    def __init__(self, ckpt: Checkpoint, cache: WhyCache) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.cache = cache
        self._findings: list[SizeFinding] = []
        self._progress_at = 0.0
        self._later: dict[Any, tuple[BarRows, Prefix, int]] = {}
        self._bars: tuple[Breakdown, int, Any] | None = None
        """The breakdown the bars show and the width they were made for (`_refit`)."""
        """Module-prefix rows not made yet: tree node id -> (builder, prefix, depth)."""

    def compose(self) -> ComposeResult:
        # markup=False: the headline and the duplicates line quote the file's name
        headline = printable(f"{self.ckpt.path} · where the bytes went …")
        yield Static(headline, id="why-headline", markup=False)
        with Horizontal(id="why-main"):
            tree = BarTree("sizes", id="why-groups")
            tree.show_root = False
            tree.auto_expand = False
            yield tree
            with Vertical(id="why-side"):
                yield Static("Findings · what would save space", id="why-findings-title")
                yield FindingList(id="why-findings")
                yield Static("", id="why-dup-label", markup=False)
                yield ProgressBar(id="why-progress", show_eta=False)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one("#why-progress").display = False
        if self.cache.breakdown is not None:
            self._show(self.cache.breakdown)
        else:
            self.query_one("#why-main").loading = True
            # After the screen's first frame: the worker's thread would compete for the GIL
            # with composing and painting it (a 100,000-tensor breakdown is seconds of Python)
            self.call_after_refresh(self.compute)

    # -- workers ---------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="why")
    def compute(self) -> Breakdown:
        """Read the file's framing and attribute every byte (no tensor data is read).

        Run on a daemon thread that `q` abandons: the breakdown has no cancellation points, and
        a worker thread still in it would hold the process open after the screen is gone."""
        worker = get_current_worker()
        files: list[tuple[str, Checkpoint, Breakdown]] = []

        def each(name: str, ckpt: Checkpoint, b: Breakdown) -> None:
            files.append((name, ckpt, b))

        # paused: its collections held the GIL 0.1-0.3 s at 100,000 tensors (`core.bulk`)
        b = interruptible(
            gc_paused_call(lambda: breakdown_of(self.ckpt, each, exported_size), keep_frozen=True),
            lambda: worker.is_cancelled,
        )
        self.cache.files = files
        return b

    @work(thread=True, exclusive=True, exit_on_error=False, group="duplicates")
    def compare(self, b: Breakdown) -> list[SizeFinding]:
        """Hash same-shaped tensors to find values stored twice (a folder: file by file)."""
        worker = get_current_worker()

        def search(ckpt: Checkpoint, fb: Breakdown) -> list[SizeFinding]:
            return find_duplicates(
                ckpt,
                fb,
                lambda done, total: self.app.call_from_thread(self._progress, done, total),
                lambda: worker.is_cancelled,
            )

        # not paused: reading and hashing can take minutes, and the UI's own garbage of all
        # that time would be frozen with it; its collections walk little (no result per tensor)
        return duplicates_of(self.ckpt, b, self.cache.files, search)

    @on(Worker.StateChanged)
    def _worker_done(self, event: Worker.StateChanged) -> None:
        group = event.worker.group
        if group == "why":
            if event.state is WorkerState.SUCCESS:
                self.cache.breakdown = event.worker.result
                # Kept while the browser is open: out of the collector's generations, or each
                # full collection walks its dicts of every storage holding the GIL
                gc_keep()
                self._show(event.worker.result)
            elif event.state is WorkerState.ERROR and not isinstance(event.worker.error, Cancelled):
                self.query_one("#why-main").loading = False
                self._headline(f"cannot break down the file: {_reason(event.worker.error)}")
        elif group == "duplicates":
            label = self.query_one("#why-dup-label", Static)
            if event.state is WorkerState.SUCCESS:
                found = event.worker.result
                b = self.cache.breakdown
                if b is not None and not self.cache.duplicates_done:
                    b.add_findings(found)
                    self.cache.duplicates_done = True
                    self._fill_findings(b)
                self.query_one("#why-progress").display = False
                label.update(_dup_summary(found))
            elif event.state is WorkerState.ERROR and not isinstance(event.worker.error, Cancelled):
                self.query_one("#why-progress").display = False
                label.update(printable(f"could not compare tensors: {_reason(event.worker.error)}"))

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done and done < total and now - self._progress_at < PROGRESS_INTERVAL:
            return
        self._progress_at = now
        bar_widget = self.query_one("#why-progress", ProgressBar)
        if total:
            bar_widget.display = True
            bar_widget.update(total=total, progress=done)
            self.query_one("#why-dup-label", Static).update(
                f"comparing same-shaped tensors: {size(done)} of {size(total)}"
            )

    # -- showing ---------------------------------------------------------------------------
    def _headline(self, text: str) -> None:
        self.query_one("#why-headline", Static).update(printable(text))

    def _show(self, b: Breakdown) -> None:
        self.query_one("#why-main").loading = False
        self._headline(b.headline)
        self._fill_findings(b)
        # Bars are sized to the tree's width, known once the loading indicator is gone.
        self.call_after_refresh(self._fill_groups, b)
        label = self.query_one("#why-dup-label", Static)
        skipped = skip_reason(self.ckpt)
        if self.cache.duplicates_done:
            label.update(_dup_summary([f for f in b.findings if f.kind == "duplicate"]))
        elif skipped is not None:
            label.update(f"duplicates {skipped}")
        else:
            label.update("comparing same-shaped tensors …")
            # After the rows are on screen: the hashing thread would compete for the GIL.
            self.call_after_refresh(self.call_after_refresh, self.compare, b)
        self.query_one("#why-groups", Tree).focus()

    def _fill_groups(self, b: Breakdown) -> None:
        tree: Tree[KeyPath | None] = self.query_one("#why-groups", Tree)
        tree.clear()
        self._later = {}
        width = max(50, tree.scrollable_content_region.width or 80)
        rows = BarRows(width, b.file_bytes)

        roles = rows.section(tree.root, "By role", b.file_bytes)
        for role, nbytes in b.roles.items():
            groups = [g for g in b.groups if g.role is role]
            one = len(groups) == 1
            node = rows.add(roles, ROLE_LABELS[role], nbytes, groups[0].path if one else None, one)
            if not one:
                for g in groups:
                    rows.add(node, show_path(g.path), g.bytes, g.path, leaf=True)
        for label, nbytes in rest_rows(b):
            rows.add(roles, label, nbytes, None, leaf=True)

        keys = rows.section(tree.root, "By top-level key", b.file_bytes)
        for path, nbytes in b.top_level[:TOP_KEYS]:
            rows.add(keys, show_path(path), nbytes, path, leaf=True)
        if len(b.top_level) > TOP_KEYS:
            rest = b.top_level[TOP_KEYS:]
            rows.add(keys, f"… {len(rest):,} more keys", sum(n for _, n in rest), None, True)

        if b.modules.children:
            under = path_text(b.weights_path or ())  # the root needs no name: "(root)" once
            title = "Weights by module prefix" + (f" (under {under})" if under else "")
            mods = rows.section(tree.root, title, b.modules.bytes, of=b.modules.bytes)
            # its own builder: rows made later (`_expanded`) share its percentages' base
            prefix_rows = BarRows(width, b.modules.bytes)
            self._add_prefixes(prefix_rows, mods, b.modules, depth=0)

        dtypes = rows.section(tree.root, "By dtype", b.categories["tensor_data"], expand=False)
        for dtype, nbytes in b.dtypes.items():
            rows.add(dtypes, dtype, nbytes, None, leaf=True)

        largest = rows.section(tree.root, f"Largest {len(b.largest)} tensors", None, expand=False)
        for item in b.largest:
            rows.add(largest, show_path(item.path), item.bytes, item.path, leaf=True)

        if b.shared:
            shared = rows.section(
                tree.root,
                f"Shared storages ({len(b.shared):,} tensors, counted once)",
                None,
                expand=False,
            )
            for a, o in b.shared[:TOP_KEYS]:
                rows.add(shared, f"{show_path(a)} → {show_path(o)}", 0, a, leaf=True)

        cats = rows.section(tree.root, "By category (sums to the file size)", b.file_bytes)
        for name, nbytes in b.categories.items():
            if not nbytes:
                continue
            details = {"overhead": b.overhead_detail, "metadata": b.metadata_detail}.get(name, {})
            node = rows.add(cats, name, nbytes, None, leaf=not details)
            for k, v in details.items():
                rows.add(node, k, v, None, leaf=True)
        tree.cursor_line = 0
        self._bars = (b, width, opened_state(tree))

    @on(BarTree.Resized)
    def _refit(self) -> None:
        """Bars made for another width (the rows brought the tree its scrollbar, one column
        narrower; or the layout changed after they were made) are made again: which of those
        came first depended on timing."""
        if self._bars is None:
            return
        b, width, state = self._bars
        tree = self.query_one("#why-groups", Tree)
        if max(50, tree.scrollable_content_region.width or 80) == width:
            return
        if (
            opened_state(tree) == state
        ):  # not once the user has moved or opened rows: kept as they are
            self._fill_groups(b)

    def _add_prefixes(self, rows: BarRows, parent: TreeNode, prefix: Prefix, depth: int) -> None:
        children = prefix.sorted_children()
        for p in children[:MAX_PREFIX_CHILDREN]:
            node = rows.add(parent, f"{p.name} ({p.tensors:,})", p.bytes, p.first, not p.children)
            if not p.children:
                continue
            if depth == 0 and len(children) <= 8:
                self._add_prefixes(rows, node, p, depth + 1)
                node.expand()
            else:
                # Collapsed: its rows are made when it is opened. A 100,000-key state dict
                # has 20,000 of them, and making them all held the UI thread for seconds.
                self._later[node.id] = (rows, p, depth + 1)
        if len(children) > MAX_PREFIX_CHILDREN:
            rest = children[MAX_PREFIX_CHILDREN:]
            rows.add(parent, f"… {len(rest):,} more", sum(p.bytes for p in rest), None, True)

    def _fill_findings(self, b: Breakdown) -> None:
        lst = self.query_one("#why-findings", OptionList)
        lst.clear_options()
        self._findings = list(b.findings)
        if not self._findings:
            lst.add_option(Option(Text("nothing to slim: no findings", style="dim"), disabled=True))
            return
        for i, f in enumerate(self._findings):
            text = Text()
            saving = f"saves {size(f.saving_bytes)}" if f.saving_bytes else "no size saving"
            text.append(saving, style="bold")
            text.append(f"  {kind_words(f.kind)}\n", style="dim")
            text.append(printable(f.message))  # it quotes keys and names from the file
            if i < len(self._findings) - 1:
                text.append("\n")  # a blank line between findings
            lst.add_option(Option(text, id=str(i)))
        lst.highlighted = 0

    # -- actions ---------------------------------------------------------------------------
    def action_close(self) -> None:
        """esc / w: back to the browser, where it was."""
        self.dismiss(None)

    def action_jump(self) -> None:
        """enter: show the selected group or finding in the browser."""
        focused = self.focused
        if isinstance(focused, OptionList):
            index = focused.highlighted
            if index is not None and index < len(self._findings):
                paths = self._findings[index].paths
                if paths:
                    self.dismiss(tree_path(self.ckpt, paths[0]))
                    return
                self.notify("this finding is about the whole file", timeout=3)
            return
        tree = self.query_one("#why-groups", Tree)
        node = tree.cursor_node
        if node is None:
            return
        if node.data is not None:
            self.dismiss(tree_path(self.ckpt, node.data))
        elif node.allow_expand:
            node.toggle()

    @on(Tree.NodeExpanded, "#why-groups")
    def _expanded(self, event: Tree.NodeExpanded) -> None:
        later = self._later.pop(event.node.id, None)
        if later is not None:
            rows, prefix, depth = later
            self._add_prefixes(rows, event.node, prefix, depth)

    @on(Tree.NodeSelected, "#why-groups")
    def _group_selected(self, event: Tree.NodeSelected) -> None:
        event.stop()
        self.action_jump()

    @on(OptionList.OptionSelected, "#why-findings")
    def _finding_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_jump()


def _dup_summary(found: list[SizeFinding]) -> str:
    if not found:
        return "no identical tensors stored twice"
    saving = sum(f.saving_bytes for f in found)
    return f"{len(found)} group(s) of identical tensors: {size(saving)} stored twice"


def _reason(error: Any) -> str:
    message = getattr(error, "message", None)
    return str(message or error)

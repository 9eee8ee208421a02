"""Provides the command-palette entries for the app's actions."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

COMMANDS = [
    ("Filter keys", "screen.filter", "show only keys matching a substring or regex"),
    ("Clear filter", "screen.clear_filter", "show the whole tree again"),
    ("Copy key path", "screen.copy_path", "copy the selected key path to the clipboard"),
    ("Compute values", "screen.values", "min/max/mean/std and a histogram of the tensor"),
    ("Why so big? (size breakdown)", "screen.why", "where the bytes went and what to drop"),
    (
        "Module view",
        "tree_toggle_modules",
        "group dotted names into modules, or show them as stored",
    ),
    ("Sort rows", "tree_sort", "next order: as stored, by name, by size, by parameters"),
    ("Mark for export", "tree_toggle_mark", "mark or unmark the subtree at the cursor"),
    ("Clear marks", "tree_clear_marks", "forget every subtree marked for export"),
    (
        "Export a slimmed copy…",
        "screen.export",
        "the weights (or the marks) to .pth/.safetensors, verified",
    ),
    ("Expand all below", "tree_expand_below", "open every row below the cursor"),
    ("Collapse all below", "tree_collapse_below", "close every row below the cursor"),
    ("Only differences", "screen.only_changes", "compare: hide equal rows, or show them again"),
    ("Compare values", "screen.compare_one", "compare: max |a-b| of the selected tensor"),
    ("Compare all values", "screen.compare_all", "compare: max |a-b| of every common tensor"),
    ("Cancel value comparison", "screen.cancel", "compare: stop; results so far stay"),
    ("Help", "help", "list every key"),
    ("Quit", "quit", "leave ckptui"),
]


MARK_ACTIONS = ("tree_toggle_mark", "tree_clear_marks", "tree_toggle_modules", "tree_sort")
"""App actions that only mean something on a screen that exports."""


def applies(screen: object, action: str) -> bool:
    """True when `action` does something on `screen` (the palette offers nothing else)."""
    if action.startswith("screen."):
        return hasattr(screen, f"action_{action.removeprefix('screen.')}")
    if action in MARK_ACTIONS:
        return hasattr(screen, "action_export")
    return True


class CkptCommands(Provider):
    """ckptui's actions, searchable by name; only those of the screen the palette opened on."""

    async def discover(self) -> Hits:
        """Listed as soon as the palette opens, before anything is typed."""
        for name, action, help_text in COMMANDS:
            if applies(self.screen, action):
                yield DiscoveryHit(name, partial(self.app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in COMMANDS:
            if not applies(self.screen, action):
                continue
            score = matcher.match(name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(name),
                    partial(self.app.run_action, action),
                    help=help_text,
                )

"""Provides the command-palette entries for the app's actions."""

from __future__ import annotations

from functools import partial

from textual.command import Hit, Hits, Provider

COMMANDS = [
    ("Filter keys", "screen.filter", "show only keys matching a substring or regex"),
    ("Clear filter", "screen.clear_filter", "show the whole tree again"),
    ("Copy key path", "screen.copy_path", "copy the selected key path to the clipboard"),
    ("Compute values", "screen.values", "min/max/mean/std and a histogram of the tensor"),
    ("Why so big? (size breakdown)", "screen.why", "where the bytes went and what to drop"),
    ("Mark for export", "tree_toggle_mark", "mark or unmark the subtree at the cursor"),
    ("Clear marks", "tree_clear_marks", "forget every subtree marked for export"),
    ("Export a slimmed copy", "screen.export", "weights only, prefix stripped, bf16: verified"),
    ("Expand all below", "tree_expand_below", "open every row below the cursor"),
    ("Collapse all below", "tree_collapse_below", "close every row below the cursor"),
    ("Help", "help", "list every key"),
    ("Quit", "quit", "leave ckptui"),
]


class CkptCommands(Provider):
    """ckptui's actions, searchable by name."""

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in COMMANDS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(name),
                    partial(self.app.run_action, action),
                    help=help_text,
                )

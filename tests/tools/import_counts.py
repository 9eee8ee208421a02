"""Counts what issue 15 measures in a source tree: private names imported from another module,
imports of ckptui modules inside functions (and how many carry a comment saying why), and modules
over 400 lines. Run: `python tests/tools/import_counts.py [tui/ckptui]`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_of(root: Path, f: Path) -> str:
    parts = list(f.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def counts(root: Path) -> dict[str, list[str]]:
    private, deferred, uncommented, big = [], [], [], []
    for f in sorted(root.rglob("*.py")):
        if f.name == "reach.py":
            continue
        text = f.read_text()
        lines = text.splitlines()
        if len(lines) > 400:
            big.append(f"{f.relative_to(root)} ({len(lines)})")
        mod = module_of(root, f)
        tree = ast.parse(text)
        top = set(map(id, tree.body))
        funcs = {
            id(inner): fn
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(fn)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = resolve(mod, f.name == "__init__.py", node)
                if not target.startswith("ckptui"):
                    continue
                private.extend(
                    f"{mod} <- {target}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__") and target != mod
                )
            elif isinstance(node, ast.Import):
                if not any(a.name.startswith("ckptui") for a in node.names):
                    continue
                target = node.names[0].name
            else:
                continue
            if id(node) not in top and not _in_type_checking(tree, node):
                where = f"{mod}:{node.lineno} -> {target}"
                deferred.append(where)
                if not _says_why(lines, node, funcs.get(id(node))):
                    uncommented.append(where)
    return {"private": private, "deferred": deferred, "uncommented": uncommented, "big": big}


def _says_why(lines: list[str], node: ast.stmt, fn: ast.AST | None) -> bool:
    """A deferred import says why: a comment on its lines or on the line (or import block)
    above, or its function's docstring says it is deferred."""
    start = node.lineno - 1
    while start > 0 and lines[start - 1].strip().startswith(("from ", "import ")):
        start -= 1  # a block of deferred imports shares the comment above it
    span = lines[max(0, start - 1) : node.end_lineno or node.lineno]
    if any("#" in line for line in span):
        return True
    doc = ast.get_docstring(fn) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) else None
    return bool(doc and "deferred" in doc.lower())


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.If)
            and "TYPE_CHECKING" in ast.unparse(stmt.test)
            and any(n is node for n in ast.walk(stmt))
        ):
            return True
    return False


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tui/ckptui").resolve()
    verbose = "-v" in sys.argv
    for k, v in counts(root).items():
        print(f"{k}: {len(v)}")
        if verbose:
            for x in v:
                print("   ", x)

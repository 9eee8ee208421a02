"""Writes `reach.py`: which functions and classes of torch, numpy and the standard library can
reach code execution, processes, the file system or the network when a pickle calls them.

`torch.load(weights_only=False)` imports and calls whatever a pickle names. Whether a name is
dangerous depends on what calling it does, so this script reads the *source* of the libraries a
checkpoint names most (the standard library, torch, numpy; never imported, only parsed with
`ast`) and follows each function's calls: a function reaches danger when its body calls
`exec`/`eval`/`compile`/`open`/`__import__`, a process-, file- or network-touching function of
`os`, `subprocess`, `socket`, `shutil`, `pickle.load*`, `importlib`, ... directly, or calls (by
name, through an import, or as `self.method`) a function that does. A class reaches danger when
what unpickling runs of it does (`__init__`, `__new__`, `__setstate__`, `__setitem__`,
`append`, `extend`, `__hash__`, `__eq__`, `__getattr__`, own or inherited); `Class.method`
references are listed on their own, since protocol 2 pickles method references as
`getattr(Class, "method")`. Aliases (`from torch.hub import load_state_dict_from_url as
load_url`) reach what they name.

Run it by hand after a torch, numpy or Python upgrade:
`python tests/tools/make_reach.py > tui/ckptui/data/reach.py && ruff format
tui/ckptui/data/reach.py`; a test checks a sample of names
against the installed libraries.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path

ROOT_BUILTINS = {"exec", "eval", "compile", "open", "__import__", "breakpoint", "execfile"}
"""Builtins whose call is a capability (unless the module defines the name itself)."""

ROOT_MODULES = {
    "subprocess", "socket", "shutil", "ctypes", "_ctypes", "marshal", "importlib", "runpy",
    "pty", "pdb", "webbrowser", "multiprocessing", "tempfile", "mmap", "urllib.request",
    "http.client", "ftplib", "smtplib", "telnetlib", "imaplib", "poplib", "nntplib", "ssl",
    "_posixsubprocess", "code", "codeop", "zipimport", "dill", "cloudpickle", "shelve",
    "ensurepip", "venv", "sqlite3", "dbm", "asyncio.subprocess", "_winapi", "requests",
}  # fmt: skip
"""Modules any function of which is a capability."""

ROOT_NAMES = {
    **{f"os.{n}": "os" for n in (
        "system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp",
        "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
        "spawnvpe", "posix_spawn", "posix_spawnp", "fork", "forkpty", "kill", "killpg",
        "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "mkdir",
        "makedirs", "open", "write", "truncate", "ftruncate", "chmod", "chown", "lchown",
        "symlink", "link", "putenv", "unsetenv", "chdir", "startfile", "fdopen", "mkfifo",
        "mknod", "utime", "setuid", "setgid", "dup2", "pipe", "listdir", "scandir", "walk",
    )},
    **{f"posix.{n}": "os" for n in ("system", "popen", "execv", "execve", "fork", "open")},
    **{f"pickle.{n}": "pickle" for n in ("load", "loads", "Unpickler")},
    **{f"_pickle.{n}": "pickle" for n in ("load", "loads", "Unpickler")},
    **{f"io.{n}": "open" for n in ("open", "FileIO", "open_code")},
    "_io.open": "open", "_io.FileIO": "open", "codecs.open": "open", "builtins.open": "open",
    "builtins.exec": "exec", "builtins.eval": "exec", "builtins.compile": "exec",
    "builtins.__import__": "import", "sys.settrace": "exec", "sys.setprofile": "exec",
    "types.FunctionType": "exec", "types.CodeType": "exec",
    "threading.Thread": "thread", "_thread.start_new_thread": "thread",
    "signal.signal": "signal", "os.path.expanduser": None,
}  # fmt: skip
"""Single functions that are capabilities (None: explicitly harmless)."""

ROOT_METHODS = {
    "open",
    "system",
    "popen",
    "urlopen",
    "unlink",
    "rmtree",
    "touch",
    "mkdir",
    "write_text",
    "write_bytes",
    "urlretrieve",
    "check_output",
    "check_call",
}
"""Method names that are capabilities whatever object they are called on (when the object
cannot be resolved statically, as `DataSource(...).open(path)`)."""

LOAD_TIME = ("__new__", "__setstate__", "__setitem__", "append", "extend",
             "__hash__", "__eq__", "__getattr__", "__getattribute__", "__set_name__",
             "__reduce_ex__")  # fmt: skip
"""What unpickling an instance runs without calling the class (NEWOBJ, BUILD, SETITEMS,
APPENDS, dict keys). A call of the class (REDUCE, INST, OBJ) also runs `__init__`, which is
listed as `Class.__init__` and checked by `safety.judge_call`."""


class Module:
    """One parsed module: its definitions, imports and calls."""

    def __init__(self, name: str, tree: ast.Module, is_pkg: bool) -> None:
        self.name = name
        self.package = name if is_pkg else name.rpartition(".")[0]
        self.imports: dict[str, str] = {}
        self.defs: dict[str, ast.AST] = {}
        self.classes: dict[str, list[str]] = {}
        self.aliases: dict[str, str] = {}
        self._collect(tree.body, "")
        for node in ast.walk(tree):  # imports inside functions (`import subprocess` in a def)
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.imports.setdefault(
                        a.asname or a.name.split(".")[0],
                        a.name if a.asname else a.name.split(".")[0],
                    )
            elif isinstance(node, ast.ImportFrom) and node.col_offset:
                mod = self._resolve_from(node)
                for a in node.names:
                    if a.name != "*":
                        self.imports.setdefault(a.asname or a.name, f"{mod}.{a.name}")

    def _resolve_from(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.package.split(".")
        if node.level > 1:
            base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])

    def _collect(self, body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.imports[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        self.imports[top] = top
            elif isinstance(node, ast.ImportFrom):
                mod = self._resolve_from(node)
                for a in node.names:
                    if a.name != "*":
                        self.imports[a.asname or a.name] = f"{mod}.{a.name}"
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.defs[prefix + node.name] = node
            elif isinstance(node, ast.ClassDef):
                qual = prefix + node.name
                self.defs[qual] = node
                self.classes[qual] = [ast.unparse(b) for b in node.bases]
                self._collect(node.body, qual + ".")
            elif isinstance(node, ast.Assign) and not prefix and len(node.targets) == 1:
                t, v = node.targets[0], node.value
                if isinstance(t, ast.Name) and isinstance(v, ast.Name | ast.Attribute):
                    self.aliases[t.id] = ast.unparse(v)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for part in ("body", "orelse", "finalbody"):
                    self._collect(getattr(node, part, []) or [], prefix)
                for h in getattr(node, "handlers", []):
                    self._collect(h.body, prefix)

    def resolve(self, dotted: str) -> str:
        """The global name a dotted expression in this module stands for."""
        head, _, rest = dotted.partition(".")
        if head in self.imports:
            target = self.imports[head]
        elif head in self.defs or head in self.aliases:
            target = f"{self.name}.{head}"
        elif head in ROOT_BUILTINS:
            target = f"builtins.{head}"
        else:
            return ""
        return f"{target}.{rest}" if rest else target


def scan(roots: dict[str, Path]) -> tuple[dict[str, Module], dict[str, set[str]], dict[str, str]]:
    """Parse every module under `roots` (top name -> folder); return modules, call edges and
    direct capabilities (name -> what it reaches)."""
    modules: dict[str, Module] = {}
    for top, folder in roots.items():
        files = [folder] if folder.suffix == ".py" else sorted(folder.rglob("*.py"))
        for f in files:
            rel = f.relative_to(folder.parent).with_suffix("")
            parts = list(rel.parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            if top and parts[0] != top:
                continue
            name = ".".join(parts)
            try:
                tree = ast.parse(f.read_bytes())
            except (SyntaxError, ValueError):
                continue
            modules[name] = Module(name, tree, is_pkg)
    edges: dict[str, set[str]] = defaultdict(set)
    roots_found: dict[str, str] = {}
    for mod in modules.values():
        for alias, target in mod.aliases.items():
            t = mod.resolve(target)
            if t:
                edges[f"{mod.name}.{alias}"].add(t)
        for local, target in mod.imports.items():
            edges[f"{mod.name}.{local}"].add(target)  # re-exports: torch.load is serialization's
        for qual, node in mod.defs.items():
            full = f"{mod.name}.{qual}"
            if isinstance(node, ast.ClassDef):
                for m in LOAD_TIME:
                    if f"{qual}.{m}" in mod.defs:
                        edges[full].add(f"{full}.{m}")
                for b in mod.classes[qual]:
                    rb = mod.resolve(b)
                    if rb:
                        edges[full].add(rb)
                continue
            cls = qual.rpartition(".")[0] if qual.rpartition(".")[0] in mod.classes else None
            for sub in ast.walk(node):
                if not isinstance(sub, ast.Call):
                    continue
                text = ast.unparse(sub.func)
                if isinstance(sub.func, ast.Name) and text in ROOT_BUILTINS:
                    if text not in mod.defs and text not in mod.imports and _dynamic(sub):
                        roots_found.setdefault(full, text)
                    continue
                if cls and text.startswith(("self.", "cls.")) and text.count(".") == 1:
                    edges[full].add(f"{mod.name}.{cls}.{text.split('.', 1)[1]}")
                    continue
                target = mod.resolve(text)
                if target and (_dynamic(sub) or not target.startswith(CONSTANT_SAFE)):
                    edges[full].add(target)
                elif isinstance(sub.func, ast.Attribute) and sub.func.attr in ROOT_METHODS:
                    roots_found.setdefault(full, sub.func.attr)  # `ds.open(path)`, `p.unlink()`
    for name, why in ROOT_NAMES.items():
        if why:
            roots_found.setdefault(name, why)
    return modules, edges, roots_found


CONSTANT_SAFE = (
    "importlib.",
    "builtins.__import__",
    "builtins.open",
    "builtins.compile",
    "io.open",
    "os.",
)
"""Capabilities that are harmless when every argument is a constant written in the library
(`importlib.import_module("torch._C")`, `open("/proc/cpuinfo")`): the file cannot choose."""


def _dynamic(call: ast.Call) -> bool:
    """True when some argument of the call is not a constant."""
    args = [*call.args, *(k.value for k in call.keywords)]
    return any(not isinstance(a, ast.Constant) for a in args)


def _root_of(target: str) -> str | None:
    for m in ROOT_MODULES:
        if target == m or target.startswith(m + "."):
            return m
    return None


def reaching(roots: dict[str, Path]) -> dict[str, str]:
    """name -> the capability it reaches, for every reaching function, class and method."""
    modules, edges, found = scan(roots)
    for targets in list(edges.values()):
        for t in targets:
            r = _root_of(t)
            if r:
                found.setdefault(t, r)
    harmless = {n for n, why in ROOT_NAMES.items() if why is None}
    reverse: dict[str, set[str]] = defaultdict(set)
    for src, targets in edges.items():
        for t in targets:
            reverse[t].add(src)
    reach = dict(found)
    todo = list(found)
    while todo:
        n = todo.pop()
        for caller in reverse.get(n, ()):
            if caller not in reach and caller not in harmless:
                reach[caller] = reach[n]
                todo.append(caller)
    # inherited methods: Class.m reaches when a base's m does and Class does not override it
    for mod in modules.values():
        for qual in mod.classes:
            own = {q.rsplit(".", 1)[1] for q in mod.defs if q.startswith(qual + ".")}
            seen: set[str] = set()
            stack = [mod.resolve(b) for b in mod.classes[qual]]
            while stack:
                base = stack.pop()
                if not base or base in seen:
                    continue
                seen.add(base)
                bmod, _, bqual = _split(modules, base)
                if bmod is None:
                    continue
                for q in bmod.defs:
                    if q.startswith(bqual + ".") and q.count(".") == bqual.count(".") + 1:
                        m = q.rsplit(".", 1)[1]
                        if m not in own and f"{bmod.name}.{q}" in reach:
                            reach.setdefault(f"{mod.name}.{qual}.{m}", reach[f"{bmod.name}.{q}"])
                stack.extend(bmod.resolve(b) for b in bmod.classes.get(bqual, []))
    prefixes = tuple(f"{t}." for t in roots)
    return {
        n: r
        for n, r in reach.items()
        if n.startswith(prefixes) and not n.split(".")[-1].startswith("test_")
    }


def _split(modules: dict[str, Module], dotted: str) -> tuple[Module | None, str, str]:
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        mod = modules.get(".".join(parts[:i]))
        if mod is not None:
            return mod, mod.name, ".".join(parts[i:])
    return None, "", ""


def default_roots() -> dict[str, Path]:
    """The standard library (each top-level module), torch and numpy, as installed."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots: dict[str, Path] = {}
    for p in sorted(stdlib.iterdir()):
        if p.name in ("site-packages", "dist-packages", "lib2to3", "tkinter", "turtledemo"):
            continue
        if p.suffix == ".py":
            roots[p.stem] = p
        elif p.is_dir() and (p / "__init__.py").exists():
            roots[p.name] = p
    for lib in ("torch", "numpy"):
        spec = __import__("importlib.util").util.find_spec(lib)
        if spec and spec.submodule_search_locations:
            roots[lib] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def main() -> None:
    """Print the `reach.py` module."""
    # flagged whole by safety.py, or the test suite's own tests: no need to list their names
    from ckptui.unpickler.safety import _DANGER_MODULES, _DANGER_PREFIXES

    roots = default_roots()
    reach = reaching(roots)
    modules = set(scan_names(roots))
    by_module: dict[str, list[str]] = defaultdict(list)
    for n, r in sorted(reach.items()):
        if n.split(".")[0] in _DANGER_MODULES or n.startswith(_DANGER_PREFIXES):
            continue
        if n.startswith(("test.test_", "torch.testing._internal.", "numpy.tests.")) or (
            ".tests." in n or "._vendor." in n
        ):
            continue
        parts = n.split(".")
        i = next((i for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in modules), 1)
        by_module[".".join(parts[:i])].append(f"{'.'.join(parts[i:])}={r}")
    out = [
        '"""Generated by `python tests/tools/make_reach.py`: names in the standard library, torch',
        "and numpy whose call can reach code execution, processes, files or the network, by",
        'module, each as `qualname=what it reaches`. Do not edit by hand (see tests/tools/make_reach.py)."""',
        "",
        f"PYTHON = {sys.version.split()[0]!r}",
        "",
        "BY_MODULE: dict[str, str] = {",
    ]
    for mod in sorted(by_module):
        text = " ".join(by_module[mod])
        chunks = [text[i : i + 80] for i in range(0, len(text), 80)]
        out.append(f"    {mod!r}: " + ("(" if len(chunks) > 1 else "") + repr(chunks[0]))
        out.extend(f"        {c!r}" for c in chunks[1:])
        out[-1] += ")," if len(chunks) > 1 else ","
    out.append("}")
    sys.stdout.write("\n".join(out) + "\n")


def scan_names(roots: dict[str, Path]) -> list[str]:
    """Every module name under `roots` (for splitting a dotted name into module and qualname)."""
    names = []
    for top, folder in roots.items():
        files = [folder] if folder.suffix == ".py" else sorted(folder.rglob("*.py"))
        for f in files:
            parts = list(f.relative_to(folder.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and parts[0] == top:
                names.append(".".join(parts))
    return names


if __name__ == "__main__":
    main()

"""The project's own code as files: which files a module runs, read from its imports (AST, lazy imports inside
functions included, relative ones resolved). What a stage's cache key digests, what dvc.yaml lists for a stage, and
what a registered model carries all come from here."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from components.files import content_key, file_digest

ROOT = Path(__file__).resolve().parents[1]  # the folder holding the packages below
PACKAGES = ("components", "flows", "ffx", "bench")
# Data and code files a module names beside itself (defaults.yaml, the registered model's entry) are read with it.
_SIBLING_FILE = re.compile(r"[\w-]+\.(yaml|yml|json|txt|py)")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    path = root / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def parse(module: str, root: Path = ROOT) -> ast.Module:
    return ast.parse(module_file(module, root).read_text())


def imports_in(node: ast.AST, module: str, root: Path = ROOT) -> set[str]:
    """Project modules imported anywhere under `node` of `module`: `from a.b import c` counts as a.b, and as a.b.c
    when c is a module."""
    found = set()
    package = module if module_file(module, root).name == "__init__.py" else module.rpartition(".")[0]
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:  # relative: from the importing module's package
                anchor = package.split(".")[:len(package.split(".")) - item.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in item.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(name, root)}


def imports_of(module: str, root: Path = ROOT) -> set[str]:
    """What `module` imports, lazy imports included, itself left out."""
    return imports_in(parse(module, root), module, root) - {module}


def _sibling_files(path: Path, module_tree: ast.Module) -> set[Path]:
    names = {n.value for n in ast.walk(module_tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {path.parent / name for name in names if _SIBLING_FILE.fullmatch(name) and (path.parent / name).is_file()}


def closure_files(modules: list[str] | tuple[str, ...], root: Path = ROOT) -> list[str]:
    """Every file `modules` read as code, relative to `root`, sorted: their import closure (each package's
    __init__.py included) and the files its modules name beside themselves."""
    todo, seen, files = list(modules), set(), set()
    while todo:
        module = todo.pop()
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        if module in seen:
            continue
        seen.add(module)
        path, module_tree = module_file(module, root), parse(module, root)
        files |= {path} | _sibling_files(path, module_tree)
        todo += imports_in(module_tree, module, root) - {module}
    return sorted(p.relative_to(root).as_posix() for p in files)


def code_key(modules: list[str] | tuple[str, ...], root: Path = ROOT) -> str:
    """The contents of every file `modules` run, as one key: it changes when any of that code does."""
    return content_key({name: file_digest(root / name) for name in closure_files(modules, root)})

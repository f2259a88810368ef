"""The project's import graph, read from the code (AST): every `import` and `from ... import`, those inside
functions too (they run when called), relative ones resolved. Shared by the architecture and DVC contract tests."""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "flows", "ffx", "bench")


def module_file(module: str) -> Path | None:
    path = REPO / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> list[str]:
    return sorted(module_name(p) for package in PACKAGES for p in (REPO / package).rglob("*.py"))


@lru_cache(maxsize=None)
def tree(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text())


def imports_in(node: ast.AST, module: str) -> set[str]:
    """Project modules imported anywhere under `node`: `from a.b import c` counts as a.b, and as a.b.c when c is a
    module."""
    found = set()
    package = module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:  # relative: from the importing module's package
                anchor = package.split(".")[:len(package.split(".")) - item.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in item.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(name)}


def imports_of(module: str) -> set[str]:
    """What `module` imports, lazy imports included, itself left out."""
    return imports_in(tree(module), module) - {module}


def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in project_modules()}


def closure_files(modules: list[str], followed: set[str] = frozenset()) -> set[str]:
    """Every file `modules` read as code: their import closure (packages' __init__.py included; `followed` are
    included without following their imports) and the data and code files its modules name beside themselves
    (components/defaults.yaml, the registered model's pyfunc_entry.py)."""
    todo, seen = list(modules), set(followed)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        if module not in seen:
            seen.add(module)
            todo += imports_of(module)
    files = {module_file(m) for m in seen}
    for path in list(files):
        names = {n.value for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        files |= {path.parent / name for name in names
                  if re.fullmatch(r"[\w-]+\.(yaml|yml|json|txt|py)", name) and (path.parent / name).is_file()}
    return {p.relative_to(REPO).as_posix() for p in files}

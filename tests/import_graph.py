"""The project's import graph, read from the code (components/codebase.py): shared by the architecture and contract
tests."""
from __future__ import annotations

from pathlib import Path

from components.codebase import PACKAGES, ROOT, imports_of


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> list[str]:
    return sorted(module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in project_modules()}

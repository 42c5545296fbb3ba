"""Reading the project's imports from its source with ``ast`` (nothing is imported), for the
checks of ``tests/test_layering.py`` (packages and cycles) and ``tests/test_dependencies.py``
(declared distributions)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Tuple

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top, one tuple per layer: a package may import the packages of the layers below
# its own, never those of its layer or above (packages in one layer are independent).
LAYERS = (
    ("infra",),
    ("preprocessing",),
    ("trainer",),
    ("serving",),
    ("pipeline", "experiments"),
    ("cli",),
)
PACKAGES = tuple(package for packages in LAYERS for package in packages)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> Dict[str, Path]:
    """Module name -> file, for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[Tuple[str, int]]:
    """(dotted name, line) of everything ``tree`` imports, at any depth. ``from a import b``
    yields ``a.b`` (b may be a module of package a, or a name defined in module a: see
    :func:`resolve`); relative imports are resolved against ``module``.
    ``importlib.import_module("x")`` with a literal name counts too."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                if node.level > 1:
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                if alias.name == "*":
                    yield base, node.lineno
                else:
                    yield f"{base}.{alias.name}" if base else alias.name, node.lineno
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                getattr(node.func, "attr", None) == "import_module"
                or getattr(node.func, "id", None) in ("import_module", "__import__")
            )
        ):
            yield node.args[0].value, node.lineno


def all_imports() -> Iterator[Tuple[str, Path, str, int]]:
    """(module, its file, dotted name it imports, line) for every import of the project's
    packages."""
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported, line in imported_names(tree, name, path.name == "__init__.py"):
            yield name, path, imported, line

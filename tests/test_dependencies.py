"""Declared dependencies and the code's imports agree (issue 15): every distribution in
``pyproject.toml``'s ``dependencies`` is imported somewhere in the project's packages, and every
third-party module they import comes from a declared distribution.

``pyproject.toml`` is read when the test runs. Which modules a distribution provides is read from
its installed files (``importlib.metadata``), so ``protobuf`` is matched by ``google.protobuf``
and ``scikit-learn`` by ``sklearn`` without a hand-kept table.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from pathlib import PurePosixPath
from typing import Dict, List, Optional, Set, Tuple

import pytest
import tomli
from imports_support import PACKAGES, ROOT, all_imports

# Declared but imported by none of our modules -> why it is declared. Remove an entry when the
# reason is gone (the test fails while an entry is imported after all).
NOT_IMPORTED = {
    "dill": "tfx_bsl imports it without declaring it, and Beam 2.74 no longer brings it",
}

# A PEP 508 requirement's distribution name: what precedes extras, versions and markers.
_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> List[str]:
    project = tomli.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [canonical(_NAME.match(requirement).group(1)) for requirement in project["dependencies"]]


def provided_modules(distribution: str) -> Set[str]:
    """Dotted names of the modules an installed distribution ships (from its RECORD; its
    ``top_level.txt`` if it has none). A namespace package such as ``google`` is not one of
    them: only ``google.protobuf`` and below are protobuf's."""
    dist = metadata.distribution(distribution)
    modules = set()
    for file in dist.files or ():
        path = PurePosixPath(str(file))
        if path.parts[0] == ".." or path.parts[0].endswith((".dist-info", ".data")):
            continue
        if path.suffix == ".py":
            parts = path.with_suffix("").parts
        elif path.suffix in (".so", ".pyd"):  # extension modules: name.cpython-310-x86_64.so
            parts = path.parts[:-1] + (path.name.split(".")[0],)
        else:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules.add(".".join(parts))
    if not modules:
        modules = set((dist.read_text("top_level.txt") or "").split())
    return modules


def provider(name: str, modules: Dict[str, Set[str]]) -> Optional[str]:
    """The distribution of ``modules`` (distribution -> its modules) that provides the longest
    prefix of the dotted ``name`` (``from a import b`` reads as ``a.b``, b maybe not a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        for distribution, provided in modules.items():
            if prefix in provided:
                return distribution
    return None


def third_party_imports() -> List[Tuple[str, str, int]]:
    """(dotted name, importing file, line) of every import that is neither the standard
    library nor one of our packages."""
    found = []
    for _, path, name, line in all_imports():
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in PACKAGES:
            continue
        found.append((name, path.relative_to(ROOT).as_posix(), line))
    return found


@pytest.fixture(scope="module")
def declared_modules() -> Dict[str, Set[str]]:
    missing = []
    modules = {}
    for distribution in declared():
        try:
            modules[distribution] = provided_modules(distribution)
        except metadata.PackageNotFoundError:
            missing.append(distribution)
    assert not missing, (
        f"declared in pyproject.toml but not installed: {', '.join(missing)} (run make install)"
    )
    return modules


def installed_providers(top: str) -> List[str]:
    return sorted(set(metadata.packages_distributions().get(top, [])))


def test_every_import_is_declared(declared_modules):
    problems = []
    for name, where, line in third_party_imports():
        if provider(name, declared_modules) is None:
            candidates = installed_providers(name.split(".")[0])
            problems.append(
                f"{where}:{line} imports {name}, which no declared dependency "
                f"provides (installed from: {', '.join(candidates) or 'nothing'}); "
                "declare it in pyproject.toml and pin it in constraints.txt"
            )
    assert not problems, "\n".join(problems)


def test_every_declared_dependency_is_imported(declared_modules):
    used = {provider(name, declared_modules) for name, _, _ in third_party_imports()}
    unused = sorted(set(declared_modules) - used - set(NOT_IMPORTED))
    problems = [
        f"{d} is declared in pyproject.toml but nothing in {', '.join(PACKAGES)} "
        "imports it: use it or remove it"
        for d in unused
    ]
    problems += [
        f"{d} is imported after all: remove it from NOT_IMPORTED"
        for d in sorted(set(NOT_IMPORTED) & used)
    ]
    problems += [
        f"{d} in NOT_IMPORTED is not declared any more: remove it from NOT_IMPORTED"
        for d in sorted(set(NOT_IMPORTED) - set(declared_modules))
    ]
    assert not problems, "\n".join(problems)


def test_distributions_map_to_the_modules_they_ship():
    """Guards the reader: names whose distribution and module differ are matched."""
    modules = {d: provided_modules(d) for d in ("protobuf", "scikit-learn", "grpcio", "keras")}
    assert provider("google.protobuf.text_format", modules) == "protobuf"
    assert provider("sklearn.manifold.TSNE", modules) == "scikit-learn"
    assert provider("grpc", modules) == "grpcio"
    assert provider("keras.layers.Dense", modules) == "keras"
    assert provider("google.cloud.storage", modules) is None  # the namespace is nobody's
    assert canonical("Tensorflow_Serving.API") == "tensorflow-serving-api"
    assert _NAME.match('tfx[kfp]==1.16.0  ; python_version < "4"').group(1) == "tfx"

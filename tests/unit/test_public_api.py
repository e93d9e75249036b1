"""The public surface and the layer rule (DESIGN §3)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import payonce

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "payonce"

# The names the issue lists as payonce's public API.
REQUIRED = {
    "Guard",
    "AsyncGuard",
    "Intent",
    "Outcome",
    "Status",
    "SQLiteStore",
    "MemoryStore",
    "once",
    "verify_ledger",
    "PayonceError",
    "IntentError",
    "KeyReuseError",
    "InProgressError",
    "OutcomeUnknownError",
    "LedgerCorruptedError",
}


def _exported() -> set[str]:
    return {
        name
        for name, value in vars(payonce).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_is_sorted() -> None:
    assert payonce.__all__ == sorted(payonce.__all__)
    assert len(set(payonce.__all__)) == len(payonce.__all__)


def test_all_equals_the_public_names() -> None:
    assert set(payonce.__all__) == _exported()


def test_required_names_are_public() -> None:
    assert set(payonce.__all__) >= REQUIRED
    for name in REQUIRED:
        assert getattr(payonce, name) is not None


def test_public_names_come_from_private_modules_or_stores() -> None:
    # Implementation modules are private; only the package facade and payonce.stores are public.
    for name in payonce.__all__:
        module = getattr(getattr(payonce, name), "__module__", "")
        assert module.startswith(("payonce._", "payonce.stores._")), (name, module)


def test_version() -> None:
    assert isinstance(payonce.__version__, str)
    assert payonce.__version__.count(".") == 2


@pytest.mark.parametrize("site", [False, True], ids=["no-site", "with-site-packages"])
def test_import_loads_no_third_party_module(site: bool) -> None:
    # Without site (-S) nothing third-party is even importable, so every module left in
    # sys.modules is stdlib or payonce's own. With site-packages, an optional import that
    # succeeds when the package is installed (try: import x) would show up as a new module.
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import payonce\n"
        "after = set(sys.modules) if sys.flags.no_site else set(sys.modules) - before\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in after})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, *([] if site else ["-S"]), "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "payonce" in loaded
    allowed = set(sys.stdlib_module_names) | {"payonce", "__main__"}
    assert loaded - allowed == set()


# --- the layer rule -------------------------------------------------------------------------

LAYER = {
    "payonce._errors": 0,
    "payonce._model": 0,
    "payonce._currencies": 0,
    "payonce._intent": 1,
    "payonce._keys": 1,
    "payonce._decide": 1,
    "payonce._retry": 1,
    "payonce._bodies": 1,
    "payonce._chain": 1,
    "payonce._transitions": 1,
    "payonce._protocols": 2,
    "payonce._clock": 2,
    "payonce._guard": 3,
    "payonce._guard_core": 3,
    "payonce._flow": 3,
    "payonce._once": 3,
    "payonce._ledger": 3,
    "payonce._reconciler": 3,
    "payonce.__main__": 5,  # ``python -m payonce``: the command line
}
LEAF = 5
# Leaves: use the public API, nothing imports them (every module inside counts as a leaf).
LEAF_PACKAGES = ("payonce.demo", "payonce.cli")
FACADE = 6  # ``payonce`` itself re-exports everything; only leaves may import it

# The one documented exception: AsyncGuard wraps a sync Store in the L4 thread adapter, imported
# lazily so that L3 does not depend on L4 at import time.
ALLOWED_UPWARD = {
    ("payonce._guard", "AsyncGuard._adopt_store", "payonce.stores._threaded"),
    ("payonce._reconciler", "AsyncReconciler.__init__", "payonce.stores._threaded"),
    ("payonce._ledger", "_async_store", "payonce.stores._threaded"),
}

# L0 and L1 do no I/O and read no clock (DESIGN §3).
IO_OR_CLOCK = {"os", "io", "time", "socket", "sqlite3", "threading", "asyncio", "subprocess",
               "random", "secrets", "logging", "pathlib", "shutil", "tempfile"}  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    scope: str  # the enclosing class/function qualname, "" at module level
    target: str  # the imported module, absolute


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.stack: list[str] = []
        self.found: list[Import] = []

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped  # noqa: N815

    def _add(self, target: str) -> None:
        self.found.append(Import(self.module, ".".join(self.stack), target))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            assert node.module is not None
            target = node.module
        self._add(target)


def _imports() -> list[Import]:
    found: list[Import] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        collector = _Collector(_module_name(path), path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found += collector.found
    return found


IMPORTS = _imports()


def _is_leaf(module: str) -> bool:
    return LAYER.get(module) == LEAF or any(
        module == p or module.startswith(p + ".") for p in LEAF_PACKAGES
    )


def _layer_of(target: str) -> int:
    if target == "payonce":
        return FACADE
    if _is_leaf(target):
        return LEAF
    if target in LAYER:
        return LAYER[target]
    if target.startswith(("payonce.stores", "payonce.testing", "payonce.gateways")):
        return 4
    raise AssertionError(f"{target} has no layer: add it to LAYER in this test")


def _is_stdlib(target: str) -> bool:
    return target.split(".", maxsplit=1)[0] in sys.stdlib_module_names


def test_the_parser_sees_the_known_imports() -> None:
    # Guards the collector itself: a broken one would make every rule below pass vacuously.
    assert Import("payonce._keys", "", "payonce._intent") in IMPORTS
    assert (
        Import("payonce._guard", "AsyncGuard._adopt_store", "payonce.stores._threaded") in IMPORTS
    )
    assert Import("payonce._errors", "", "datetime") in IMPORTS


def test_every_top_level_module_has_a_layer() -> None:
    modules = {_module_name(p) for p in PACKAGE.glob("*.py")} - {"payonce"}
    assert modules == set(LAYER)
    packages = {f"payonce.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert packages - {"payonce.stores", "payonce.gateways", "payonce.testing"} == set(
        LEAF_PACKAGES
    )


@pytest.mark.parametrize("module", sorted(m for m, layer in LAYER.items() if layer == 0))
def test_l0_imports_only_the_stdlib(module: str) -> None:
    targets = {i.target for i in IMPORTS if i.module == module}
    assert targets
    assert {t for t in targets if not _is_stdlib(t)} == set()


@pytest.mark.parametrize("module", sorted(m for m, layer in LAYER.items() if layer == 1))
def test_l1_imports_only_l0_l1_and_the_stdlib(module: str) -> None:
    for imp in (i for i in IMPORTS if i.module == module):
        if imp.target.startswith("payonce"):
            assert _layer_of(imp.target) <= 1, imp
        else:
            assert _is_stdlib(imp.target), imp


@pytest.mark.parametrize("module", sorted(m for m, layer in LAYER.items() if layer <= 1))
def test_l0_l1_do_no_io_and_read_no_clock(module: str) -> None:
    targets = {i.target.split(".")[0] for i in IMPORTS if i.module == module}
    assert targets & IO_OR_CLOCK == set()
    source = (SRC / Path(*module.split("."))).with_suffix(".py").read_text(encoding="utf-8")
    for call in ("datetime.now(", "datetime.utcnow(", "date.today(", "time.time("):
        assert call not in source


@pytest.mark.parametrize("module", sorted(m for m, layer in LAYER.items() if layer == 2))
def test_l2_imports_only_l0_l2_and_the_stdlib(module: str) -> None:
    for imp in (i for i in IMPORTS if i.module == module):
        if imp.target.startswith("payonce"):
            assert _layer_of(imp.target) <= 2, imp
        else:
            assert _is_stdlib(imp.target), imp


def test_l2_l3_import_no_store_except_the_documented_lazy_adapter() -> None:
    upward = {
        (i.module, i.scope, i.target)
        for i in IMPORTS
        if LAYER.get(i.module, 4) in (2, 3)
        and i.target.startswith("payonce")
        and _layer_of(i.target) > 3
    }
    assert upward == ALLOWED_UPWARD


@pytest.mark.parametrize("module", sorted(m for m, layer in LAYER.items() if layer == 3))
def test_l3_imports_only_lower_layers_and_the_stdlib(module: str) -> None:
    for imp in (i for i in IMPORTS if i.module == module):
        if (imp.module, imp.scope, imp.target) in ALLOWED_UPWARD:
            continue
        if imp.target.startswith("payonce"):
            assert _layer_of(imp.target) <= 3, imp
        else:
            assert _is_stdlib(imp.target), imp


def test_the_allowed_lazy_import_is_not_at_module_level() -> None:
    module_level = {
        (i.module, i.target) for i in IMPORTS if i.scope == "" and LAYER.get(i.module, 4) <= 3
    }
    assert ("payonce._guard", "payonce.stores._threaded") not in module_level
    assert not any(t.startswith("payonce.stores") for _, t in module_level)


def test_only_leaves_import_the_facade_and_nothing_imports_a_leaf() -> None:
    for imp in IMPORTS:
        if imp.module == "payonce" or _is_leaf(imp.module):
            continue
        assert imp.target != "payonce", imp
        if imp.target.startswith("payonce"):
            assert _layer_of(imp.target) != LEAF, imp


def test_stores_import_only_l0_l2_and_other_store_modules() -> None:
    store_imports = [i for i in IMPORTS if i.module.startswith("payonce.stores")]
    assert store_imports
    for imp in store_imports:
        if imp.target.startswith("payonce"):
            assert _layer_of(imp.target) in (0, 1, 2, 4), imp
            assert not imp.target.startswith("payonce.testing"), imp

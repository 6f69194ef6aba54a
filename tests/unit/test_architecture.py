"""The layering docs/architecture.md describes, checked on the source: who may import whom, and which modules
stay free of torch so the registry, retraining and the summary can find a run's files without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# The stage contract: what every stage and the model may use. It imports nothing of neox but neox.errors.
CONTRACT = (
    "neox.errors",
    "neox.pipeline.layout",
    "neox.pipeline.stage",
    "neox.pipeline.atomic",
    "neox.pipeline.configfile",
)
# Longest prefix wins: a module may import what its entry allows (and the standard library, third parties).
ALLOWED = {
    "neox": (),
    "neox.errors": (),
    **{module: CONTRACT for module in CONTRACT},
    "neox.runtime": (*CONTRACT, "neox.runtime"),
    "neox.model": (*CONTRACT, "neox.model"),
    "neox.data": (*CONTRACT, "neox.runtime", "neox.data"),
    "neox.train": (*CONTRACT, "neox.runtime", "neox.model", "neox.data", "neox.train"),
    "neox.eval": (*CONTRACT, "neox.runtime", "neox.model", "neox.data", "neox.eval"),
    "neox.registry": (*CONTRACT, "neox.runtime", "neox.model", "neox.data", "neox.eval", "neox.registry"),
    "neox.pipeline": ("neox",),
    "neox.cli": ("neox",),
    "tasks": ("neox", "tasks"),
    "flows": ("neox", "tasks", "flows"),
}
NEVER_IN_THE_LIBRARY = ("prefect", "tasks", "flows")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def first_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rule_for(module: str) -> tuple[str, ...]:
    return ALLOWED[max((p for p in ALLOWED if within(module, p)), key=len)]


SOURCES = sorted(p for folder in ("neox", "tasks", "flows") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_each_module_imports_only_what_its_layer_may(path):
    module, allowed = module_name(path), rule_for(module_name(path))
    ours = {name for name in first_party_imports(path) if name.split(".")[0] in ("neox", "tasks", "flows")}
    wrong = sorted(name for name in ours if not any(within(name, prefix) for prefix in allowed))
    assert not wrong, f"{module} may import only {allowed}, but imports {wrong}"
    if within(module, "neox"):
        assert not {n for n in first_party_imports(path) if n.split(".")[0] in NEVER_IN_THE_LIBRARY}


def test_run_layout_registry_rule_lineage_and_retraining_do_not_import_torch():
    modules = "neox.pipeline.layout, neox.registry.rule, neox.registry.lineage, neox.pipeline.retrain"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )

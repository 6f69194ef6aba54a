"""One error root: every exception neox defines is a NeoxError (so the CLI prints it as one line), and each kind
is still the built-in exception callers caught before the root existed."""

from __future__ import annotations

import ast
import builtins

import pytest

from neox import errors
from neox.data.download import ChecksumMismatch, EmptyFolder
from neox.data.jsonl import CorruptShardError
from neox.pipeline.stage import ManifestError
from neox.train.checkpointing import ResumeError
from tests.conftest import REPO

BUILTIN_EXCEPTIONS = {
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
}


def test_only_neox_errors_derives_from_a_built_in_exception():
    """Elsewhere an exception class derives from one of neox.errors' kinds, never straight from a built-in."""
    offenders = []
    for path in sorted((REPO / "neox").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "neox":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
                if bases & BUILTIN_EXCEPTIONS:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not offenders


@pytest.mark.parametrize(
    "error, kind, builtin",
    [
        (CorruptShardError, errors.DataError, ValueError),
        (ManifestError, errors.DataError, ValueError),
        (EmptyFolder, errors.MissingInput, FileNotFoundError),
        (ChecksumMismatch, errors.ServiceError, RuntimeError),
        (ResumeError, errors.RunStateError, RuntimeError),
        (errors.OutputExists, errors.RunStateError, FileExistsError),
        (errors.ConfigError, errors.NeoxError, ValueError),
    ],
)
def test_each_error_has_its_kind_under_the_root_and_its_built_in(error, kind, builtin):
    assert issubclass(error, kind) and issubclass(error, errors.NeoxError) and issubclass(error, builtin)

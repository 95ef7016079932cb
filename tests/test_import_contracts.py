"""The import contracts (pyproject.toml, [tool.importlinter]) hold, and would catch a break.

./scripts/test runs lint-imports on the repository itself; these tests run it on a copy
with one deliberate wrong import each, to show the contracts are not a check that cannot
fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "preferences", "audit", "integrations", "lib", "standins")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The project's packages and contracts, copied so a test may break them."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(tree: Path, module: str, statement: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{statement}  # deliberately wrong\n")


def test_the_contracts_hold_on_the_project(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        # A cycle: the sync core already imports the models.
        (
            "preferences.models",
            "from integrations import core",
            ["Pages and tasks -> integrations", "preferences.models -> integrations.core"],
        ),
        # The audit log reaching up into a feature (and a cycle: features import audit).
        (
            "audit.services",
            "from preferences.services import apply_change",
            ["audit records what it is given", "audit.services -> preferences.services"],
        ),
        # One outside system's package using another's.
        (
            "integrations.ascend.sync",
            "from integrations.salesforce import sync",
            ["Each outside system's package is independent", "integrations.ascend.sync"],
        ),
        # Two modules of one package importing each other.
        (
            "preferences.bulk.jobs",
            "from preferences.bulk import views",
            ["No package's modules import each other in a circle", "preferences.bulk"],
        ),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tree: Path, module: str, statement: str, broken: list[str]
) -> None:
    _add_import(tree, module, statement)

    result = _lint(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    output = " ".join(result.stdout.split())  # the report wraps long lines
    for words in broken:
        assert words in output, result.stdout

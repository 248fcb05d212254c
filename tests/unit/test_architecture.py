"""The sealed layers: the import contracts in pyproject.toml ([tool.importlinter]) hold for the
code as it stands, and no project module shadows a standard-library module."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("emu", "vmm", "hypervisors", "benchmarks", "guests")


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_module_shadows_the_standard_library():
    names = [path.parent.name if path.name == "__init__.py" else path.stem
             for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    assert sorted(set(names) & sys.stdlib_module_names) == []

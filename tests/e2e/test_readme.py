"""The README's `trapvisor` examples run as written (the debugger's and gdb's are covered by
test_debugger.py and test_gdbstub.py)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(r"^\$ trapvisor (?P<args>[^#&]*?)\s*(?:#\s*exits (?P<status>\d+))?\s*$")


def examples() -> list[tuple[str, int]]:
    found = []
    for line in (ROOT / "README.md").read_text().splitlines():
        match = EXAMPLE.match(line)
        if match and not match["args"].startswith("debug") and "--gdb" not in match["args"]:
            found.append((match["args"], int(match["status"] or 0)))
    return found


def test_the_readme_has_examples():
    assert len(examples()) >= 5


@pytest.mark.parametrize("args,status", examples())
def test_readme_example(args, status):
    done = subprocess.run([sys.executable, "-m", "hypervisors.cli", *shlex.split(args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == status, done.stdout + done.stderr
    assert "Traceback" not in done.stderr

"""The README's `trapvisor` examples run as written (the debugger's and gdb's are covered by
test_debugger.py and test_gdbstub.py; `trapvisor bench` examples are marked `bench`)."""
from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT, trapvisor

EXAMPLE = re.compile(r"^\$ trapvisor (?P<args>[^#&]*?)\s*(?:#\s*exits (?P<status>\d+))?\s*$")


def examples() -> list:
    found = []
    for line in (ROOT / "README.md").read_text().splitlines():
        match = EXAMPLE.match(line)
        if match and not match["args"].startswith("debug") and "--gdb" not in match["args"]:
            marks = [pytest.mark.bench] if match["args"].startswith("bench") else []
            found.append(pytest.param(match["args"], int(match["status"] or 0), marks=marks))
    return found


def test_the_readme_has_examples():
    assert len(examples()) >= 5


@pytest.mark.parametrize("args,status", examples())
def test_readme_example(args, status):
    done = trapvisor(*shlex.split(args), timeout=300)
    assert done.returncode == status, done.stdout + done.stderr
    assert "Traceback" not in done.stderr

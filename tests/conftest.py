"""Shared helpers: the engine and hypervisor axes (from their registries), a guest run through a
hypervisor and engine with its serial output collected, and the `trapvisor` command as a user
runs it."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypervisors.images import resolve
from hypervisors.registry import HYPERVISORS
from vmm.engines import ENGINES
from vmm.vcpu import RunResult
from vmm.vm import DEFAULT_RAM

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "tests" / "e2e" / "expected"      # golden serial output of the shipped guests
PROGRAMS = ROOT / "tests" / "programs"              # guest programs written for the tests
CLI = [sys.executable, "-m", "hypervisors.cli"]     # the console script's entry, in this Python


@dataclass
class GuestRun:
    output: bytes
    result: RunResult

    @property
    def text(self) -> str:
        return self.output.decode("latin-1")


def run_guest(spec: str | Path, engine: str, hypervisor: str = "monolithic",
              **options) -> GuestRun:
    """Boot ``spec`` (a shipped guest's name or a path) under ``hypervisor`` and run it to its
    end."""
    chunks: list[bytes] = []
    options.setdefault("timeout", 60)
    machine = HYPERVISORS[hypervisor](engine=engine, sink=chunks.append, **options)
    try:
        result = machine.run(resolve(str(spec), options.get("ram_size", DEFAULT_RAM)))
    finally:
        machine.close()
    return GuestRun(b"".join(chunks), result)


def trapvisor(*args: str, input: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """`trapvisor ARGS` from the repository root, text output captured."""
    return subprocess.run([*CLI, *args], cwd=ROOT, input=input, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(params=list(ENGINES))
def engine(request) -> str:
    return request.param


@pytest.fixture(params=list(HYPERVISORS))
def hypervisor(request) -> str:
    return request.param

"""Shared helpers: run a guest through a hypervisor and engine and collect its serial output."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hypervisors.images import resolve
from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.monolithic import MonolithicHypervisor
from vmm.vcpu import RunResult
from vmm.vm import DEFAULT_RAM

TEST_GUESTS = Path(__file__).resolve().parent / "guests"
ENGINES = ("native", "trap", "bt", "vtx")


@dataclass
class GuestRun:
    output: bytes
    result: RunResult

    @property
    def text(self) -> str:
        return self.output.decode("latin-1")


HYPERVISORS = {"monolithic": MonolithicHypervisor, "micro": MicroHypervisor}


def run_guest(spec: str, engine: str, hypervisor: str = "monolithic", **options) -> GuestRun:
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


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param

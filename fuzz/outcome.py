"""How one run of a case under one engine ended, in the fuzzer's classes, and what it printed.

The VMM's own failures are ``vmm-error`` (RunState.VMM_ERROR, status 4 at the command line),
``crash`` (a Python exception out of the hypervisor, or the worker process died) and ``hang``
(the run outlived --timeout: the VMM did not stop it). Everything else is something the guest did.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass


class Outcome(enum.Enum):
    EXITED = "exited"                # through isa-debug-exit, with a status
    GUEST_FAULT = "guest-fault"
    TRIPLE_FAULT = "triple-fault"
    HALTED = "halted"
    TIMEOUT = "timeout"
    MAX_EXITS = "max-exits"
    INSTRUCTION_LIMIT = "instruction-limit"   # still running after --max-instructions
    DEVICE_ERROR = "device-error"
    VMM_ERROR = "vmm-error"
    CRASH = "crash"
    HANG = "hang"

    @property
    def vmm_failure(self) -> bool:
        return self in (Outcome.VMM_ERROR, Outcome.CRASH, Outcome.HANG)

    @property
    def unfinished(self) -> bool:
        """Cut short by a bound, not ended by the guest: only the output so far can compare."""
        return self in (Outcome.TIMEOUT, Outcome.MAX_EXITS, Outcome.INSTRUCTION_LIMIT)


@dataclass
class Run:
    engine: str
    outcome: Outcome
    status: int | None = None
    output: bytes = b""
    message: str = ""
    exits: int = 0
    instructions: int = 0
    seconds: float = 0.0
    fidelity: str = ""               # trap's list of sensitive instructions it could not see
    retried_after: float = 0.0       # seconds of a first run cut short by --timeout

    @property
    def verdict(self) -> str:
        """The outcome as it is compared across engines."""
        if self.outcome is Outcome.EXITED:
            return f"exited {self.status}"
        return "unfinished" if self.outcome.unfinished else self.outcome.value

    def to_json(self) -> dict:
        record = asdict(self)
        record.update(outcome=self.outcome.value, output=self.output.hex())
        return record

    @classmethod
    def from_json(cls, record: dict) -> "Run":
        return cls(**{**record, "outcome": Outcome(record["outcome"]),
                      "output": bytes.fromhex(record["output"])})

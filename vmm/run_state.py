"""How a run stands or ended: the run states a vCPU can end in, and the result a run returns
(with the report printed when a guest fails: where it stopped, the last exits, the counts)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

LAST_EXITS = 16


class RunState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"                  # the guest wrote its status to the debug-exit port
    TRIPLE_FAULT = "triple-fault"
    HALTED = "halted"                  # HLT that nothing can ever wake
    RESET = "reset"                    # the guest pulsed the reset line (i8042 0xFE, port 0x92)
    GUEST_FAULT = "fault"              # unmapped memory, garbage the machine cannot execute
    TIMEOUT = "timeout"
    MAX_EXITS = "max-exits"
    VMM_ERROR = "vmm-error"
    DEVICE_ERROR = "device-error"      # a device model outside the hypervisor failed or vanished


@dataclass
class RunResult:
    state: RunState
    status: int | None
    message: str
    rip: int = 0
    instruction: str = ""
    last_exits: list[str] = field(default_factory=list)
    exits: int = 0
    instructions: int = 0
    wall_seconds: float = 0.0
    fidelity: str = ""          # what the engine could not virtualize (trap's blind spots)

    @property
    def ok(self) -> bool:
        return self.state is RunState.EXITED

    def report(self) -> str:
        lines = [f"trapvisor: {self.state.value}: {self.message}",
                 f"  guest RIP {self.rip:#010x}: {self.instruction or '?'}",
                 f"  {self.instructions} instructions counted, {self.exits} exits, "
                 f"{self.wall_seconds:.3f} s"]
        if self.last_exits:
            lines.append(f"  last {len(self.last_exits)} exits:")
            lines += [f"    {line}" for line in self.last_exits]
        if self.fidelity:
            lines.append(self.fidelity)
        return "\n".join(lines)

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
    INPUT_DONE = "input-done"          # the typed --input script is over and the console quiet
    GUEST_FAULT = "fault"              # unmapped memory, garbage the machine cannot execute
    TIMEOUT = "timeout"
    MAX_EXITS = "max-exits"
    VMM_ERROR = "vmm-error"
    DEVICE_ERROR = "device-error"      # a device model outside the hypervisor failed or vanished


def outside_ram(kind: str, address: int, size: int, ram_size: int) -> str:
    """How a run that touched a guest-physical address with nothing behind it ends (the same
    words whether the CPU's own access or the VMM's, acting as the CPU, reached it)."""
    return (f"guest {kind} of {size} bytes at guest-physical {address:#x}, outside RAM "
            f"({ram_size >> 20} MiB) and every MMIO window")


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
    uncounted: bool = False     # some of the run ran uncounted (nothing could observe time)

    @property
    def ok(self) -> bool:
        return self.state is RunState.EXITED

    def report(self) -> str:
        lines = [f"trapvisor: {self.state.value}: {self.message}",
                 f"  guest RIP {self.rip:#010x}: {self.instruction or '?'}",
                 f"  {self.counted()}, {self.exits} exits, {self.wall_seconds:.3f} s"]
        if self.last_exits:
            lines.append(f"  last {len(self.last_exits)} exits:")
            lines += [f"    {line}" for line in self.last_exits]
        if self.fidelity:
            lines.append(self.fidelity)
        return "\n".join(lines)

    def counted(self) -> str:
        """How many instructions ran, as far as anyone counted them."""
        if not self.uncounted:
            return f"{self.instructions} instructions counted"
        if not self.instructions:
            return ("instructions not counted (the run was uncounted: no timer or interrupt "
                    "could observe time)")
        return (f"{self.instructions} instructions counted, more ran uncounted (while no timer "
                f"or interrupt could observe time)")

"""Where a vCPU's run pauses, for whoever drives it stop by stop (the debugger, the GDB stub):
pause requests, address breakpoints kept as Unicorn exits (no cost while running), and
instruction steps. The run loop only asks it how far to run and whether to pause."""
from __future__ import annotations

DEBUG_SLICE = 200_000   # instructions per run() under a debugger: bounds Ctrl-C latency


class RunControl:
    """The pause state of one vCPU. ``precise``: stops requested from an exit hook must land
    right after that instruction, so every run is counted."""

    def __init__(self, cpu):
        self.cpu = cpu
        self.precise = False
        self.pause_requested = False
        self.breakpoints: frozenset[int] = frozenset()
        self.breakpoint_hit: int | None = None
        self.steps_left: int | None = None

    def request_pause(self) -> None:
        """From a hook: stop at the next instruction boundary (precise in counted runs)."""
        self.pause_requested = True
        self.cpu.stop()

    def interrupt(self) -> None:
        """From another thread: pause at the end of the current slice. (A stop requested from
        outside can land inside an instruction, which Unicorn then executes twice.)"""
        self.pause_requested = True

    def set_breakpoints(self, addresses) -> None:
        """Linear addresses before which the CPU stops (Unicorn exits: no cost while running)."""
        self.breakpoints = frozenset(addresses)
        self.cpu.set_exits(self.breakpoints)

    def step(self, instructions: int | None) -> None:
        """Pause after this many more guest instructions (None: no limit)."""
        self.steps_left = instructions

    def slice_limit(self) -> int | None:
        """How many instructions the next run may take for this control's sake (None: any)."""
        return None if self.steps_left is None else min(self.steps_left, DEBUG_SLICE)

    def count_steps(self, executed: int) -> None:
        if self.steps_left is not None:
            self.steps_left -= executed
            if self.steps_left <= 0:
                self.steps_left = None
                self.pause_requested = True

    def at_breakpoint(self) -> bool:
        """Unicorn stops at an exit address the way it stops on HLT: was this such a stop?"""
        if self.breakpoints and self.cpu.linear_pc() in self.breakpoints:
            self.breakpoint_hit = self.cpu.linear_pc()
            self.pause_requested = True
            return True
        return False

"""The vCPU run loop: enter the guest, take exits, call observers and the handler, apply the outcome.

Exits are handled where Unicorn reports them (inside its hooks, like KVM handling an exit in the
kernel); the loop itself only runs between instruction slices: it advances virtual time, fires
timers, injects interrupts when the guest's interrupt window is open, idles a halted CPU straight
to its next timer event, enforces --timeout / --max-exits, and pauses where a debugger asks
(address breakpoints as Unicorn exits, instruction steps, requests from exit observers).
"""
from __future__ import annotations

import collections
import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from emu.events import TripleFault, UnsupportedEvent
from vmm.exits import Outcome, dispatch
from vmm.vmcs import VmExit

MAX_SLICE = 2_000_000   # instructions per counted run() when no timer is due
WALL_SLICE = 100_000    # instructions per run() under --wall-clock (the PIT is checked between)
DEBUG_SLICE = 200_000   # instructions per run() under a debugger: bounds Ctrl-C latency
STI = 0xFB
LAST_EXITS = 16


def _dead_read(port: int, size: int) -> int:
    return (1 << 8 * size) - 1


def _dead_write(port: int, size: int, value: int) -> None:
    return None


class RunState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"                  # the guest wrote its status to the debug-exit port
    TRIPLE_FAULT = "triple-fault"
    HALTED = "halted"                  # HLT that nothing can ever wake
    GUEST_FAULT = "fault"              # unmapped memory, garbage the machine cannot execute
    TIMEOUT = "timeout"
    MAX_EXITS = "max-exits"
    VMM_ERROR = "vmm-error"
    DEVICE_ERROR = "device-error"      # a device model outside the hypervisor failed or vanished


class Observer(Protocol):
    """Tracing, statistics and the debugger watch exits without being handlers."""

    def on_exit(self, vcpu: "Vcpu", exit: VmExit) -> None: ...
    def on_entry(self, vcpu: "Vcpu", exit: VmExit, outcome: Outcome) -> None: ...


class Engine(Protocol):
    """A CPU virtualization technique: it turns Unicorn events into exits or hardware behaviour."""
    name: str

    def attach(self, vcpu: "Vcpu") -> None: ...
    def reset(self) -> None: ...
    def interrupt_window(self) -> bool: ...
    def inject_external(self, vector: int) -> None: ...
    def after_run(self) -> None: ...
    def machine_error(self, err: int) -> None: ...
    def fetch(self, linear: int) -> bytes: ...
    def describe_pc(self) -> tuple[int, str]: ...


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
            lines.append(f"  last {len(self.last_exits)} recorded exits:")
            lines += [f"    {line}" for line in self.last_exits]
        if self.exits > len(self.last_exits) and len(self.last_exits) < LAST_EXITS:
            lines.append("  (exits taken on the fastpath are counted, not recorded: run with "
                         "--trace FILE or --stats to record every exit)")
        if self.fidelity:
            lines.append(self.fidelity)
        return "\n".join(lines)


class Vcpu:
    """One virtual CPU of a VM, driven by an engine and a hypervisor's exit-handler table."""

    def __init__(self, vm, engine: Engine, handlers, observers=(), timeout: float | None = None,
                 max_exits: int | None = None, wall_clock: bool = False):
        self.vm = vm
        self.cpu = vm.cpu
        self.engine = engine
        self.handlers = handlers
        self.observers = list(observers)
        self.timeout = timeout
        self.max_exits = max_exits
        self.wall_clock = wall_clock
        self.state = RunState.RUNNING
        self.status: int | None = None
        self.message = ""
        self.halted = False
        self.interrupt_shadow = False
        self.exit_count = 0
        self.final_exit_count = 0
        self.instructions = 0
        self.recent: collections.deque[VmExit] = collections.deque(maxlen=LAST_EXITS)
        self.guest = None  # set by the engine: what handlers emulate against
        # Exit fastpath (as KVM's handle_fastpath_*): with nobody observing, engines skip building
        # VmExit records and call the hypervisor's port-I/O callables directly.
        self.fast = not self.observers and max_exits is None
        self.precise = False          # a debugger needs stops from hooks to be exact: count always
        self.pause_requested = False
        self.breakpoints: frozenset[int] = frozenset()
        self.breakpoint_hit: int | None = None
        self.steps_left: int | None = None
        self.run_seconds = 0.0
        self.io_read = vm.pio.read
        self.io_write = vm.pio.write
        engine.attach(self)

    @property
    def stopping(self) -> bool:
        return self.state is not RunState.RUNNING

    # ----- exits ------------------------------------------------------------------------------
    def handle_exit(self, exit: VmExit) -> Outcome:
        """Called by the engine inside a Unicorn hook for every VM exit."""
        if self.state is not RunState.RUNNING:
            return Outcome.STOP
        self.exit_count += 1
        self.recent.append(exit)
        for observer in self.observers:
            observer.on_exit(self, exit)
        try:
            outcome = dispatch(self.handlers, self, exit)
        except BaseException:
            self._observe_entry(exit, Outcome.STOP)  # observers see the exit that killed the run
            raise
        if outcome is Outcome.HALT:
            self.halt()
        elif outcome is Outcome.STOP:
            self.cpu.stop()
        if self.max_exits is not None and self.exit_count >= self.max_exits and not self.stopping:
            self.finish(RunState.MAX_EXITS, f"--max-exits {self.max_exits} reached")
        self._observe_entry(exit, outcome)
        return outcome

    def _observe_entry(self, exit: VmExit, outcome: Outcome) -> None:
        exit.entry_ns = time.perf_counter_ns()
        for observer in self.observers:
            observer.on_entry(self, exit, outcome)

    def finish(self, state: RunState, message: str, status: int | None = None) -> None:
        """End the run (from a hook or the loop); the first reason given wins.

        Unicorn stops only at the end of the current translation block, so the instructions
        after a stopping exit still run: from here on their I/O reaches no device and their
        exits are neither handled nor counted."""
        if self.state is RunState.RUNNING:
            self.state, self.message, self.status = state, message, status
            self.final_exit_count = self.exit_count
            self.io_read, self.io_write = _dead_read, _dead_write
            self.fast = True
        self.cpu.stop()

    def guest_exit(self, value: int) -> None:
        """The debug-exit device's callback: the guest ends the run with a status."""
        self.finish(RunState.EXITED, f"guest wrote {value:#x} to the debug-exit port", value)

    def finish_triple_fault(self, detail: str) -> None:
        self.finish(RunState.TRIPLE_FAULT, detail or "triple fault: the processor shut down")

    def halt(self) -> None:
        self.halted = True
        self.cpu.stop()

    def open_interrupt_window(self) -> None:
        """The guest just set IF: deliver a pending interrupt after one more instruction."""
        if self.vm.irq_chip.has_interrupt():
            self.interrupt_shadow = True
            self.cpu.stop()

    # ----- the loop ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run the guest to its end."""
        self.resume()
        return self.result()

    def resume(self) -> None:
        """Run until the guest ends or something requests a pause (a debugger's stop).

        A pause requested before or during the call is consumed when it returns, never lost.
        --timeout counts only the time spent here, not time spent stopped in a debugger."""
        started = time.perf_counter()
        watchdog = self._watchdog()
        try:
            while self.state is RunState.RUNNING and not self.pause_requested:
                self._service_interrupts()
                if self.state is not RunState.RUNNING:
                    break
                if self.halted:
                    self._idle()
                else:
                    self._run_slice()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self.pause_requested = False
            self.run_seconds += time.perf_counter() - started

    def _watchdog(self) -> threading.Timer | None:
        """--timeout: a timer thread ends the run. Unicorn may stop the CPU inside an
        instruction when asked from another thread (and would execute it again on resume), so
        this is the only stop that comes from outside, and it ends the run for good."""
        if not self.timeout:
            return None
        expire = lambda: self.finish(RunState.TIMEOUT, f"--timeout {self.timeout:g} s expired")
        watchdog = threading.Timer(max(self.timeout - self.run_seconds, 0), expire)
        watchdog.daemon = True
        watchdog.start()
        return watchdog

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

    def _run_slice(self) -> None:
        budget = self._budget()
        if self.wall_clock:
            err = self.cpu.run(budget)
        else:
            clock = self.vm.clock
            clock.running = True
            err = self.cpu.run(budget)
            clock.running = False
            clock.retire(self.cpu.executed())
        self.instructions += self.cpu.executed()
        self._count_steps()
        self.vm.update_timers()
        if self.cpu.hook_error is not None:
            self._hook_failed(self.cpu.hook_error)
        elif err:
            self.engine.machine_error(err)
        elif self.state is RunState.RUNNING and not self._at_breakpoint():
            self.engine.after_run()

    def retire(self, count: int) -> None:
        """Instructions the VMM carried out itself (a translation callout, an instruction
        completed for an exit handler) retire like executed ones: in virtual time and steps."""
        self.instructions += count
        if not self.wall_clock:
            self.vm.clock.retire(count)
        self._count_steps(count)

    def _count_steps(self, executed: int | None = None) -> None:
        if self.steps_left is not None:
            self.steps_left -= self.cpu.executed() if executed is None else executed
            if self.steps_left <= 0:
                self.steps_left = None
                self.pause_requested = True

    def _at_breakpoint(self) -> bool:
        """Unicorn stops at an exit address the way it stops on HLT, so this comes first."""
        if self.breakpoints and self.cpu.linear_pc() in self.breakpoints:
            self.breakpoint_hit = self.cpu.linear_pc()
            self.pause_requested = True
            return True
        return False

    def _budget(self) -> int:
        """Instructions for the next run; 0 means an uncounted run that ends on its own."""
        if self.interrupt_shadow:
            self.interrupt_shadow = False
            return 1
        if self.steps_left is not None:
            return min(self.steps_left, DEBUG_SLICE)
        if self.vm.irq_chip.has_interrupt():
            self.cpu.watch_blocks(self._window_check)
        else:
            self.cpu.unwatch_blocks()
        if self.wall_clock:
            return WALL_SLICE
        if self.vm.quiescent() and not self.precise:
            return 0  # nothing can interrupt or observe time: uncounted, full speed
        deadline = self.vm.next_deadline_ns()
        limit = DEBUG_SLICE if self.precise else MAX_SLICE
        return limit if deadline is None else min(limit, self.vm.clock.budget_until(deadline))

    def _window_check(self) -> None:
        """Block hook while an interrupt is held: stop as soon as the guest can take it."""
        if self.engine.interrupt_window():
            self.cpu.unwatch_blocks()
            pc = self.cpu.linear_pc()
            self.interrupt_shadow = self.engine.fetch((pc - 1) & 0xFFFFFFFF)[:1] == bytes([STI])
            self.cpu.stop()

    def _service_interrupts(self) -> None:
        chip = self.vm.irq_chip
        if self.interrupt_shadow or not chip.has_interrupt() or not self.engine.interrupt_window():
            return
        self.cpu.unwatch_blocks()
        vector = chip.acknowledge()
        self.halted = False
        try:
            self.engine.inject_external(vector)
        except TripleFault as fault:
            self.finish_triple_fault(str(fault))
        except UnsupportedEvent as exc:
            self.finish(RunState.GUEST_FAULT, str(exc))

    def _idle(self) -> None:
        """HLT: jump virtual time to the next timer event, or end the run if nothing can wake us."""
        if not self.engine.interrupt_window():
            self.finish(RunState.HALTED, "HLT with interrupts disabled: nothing can wake the CPU")
            return
        deadline = self.vm.next_deadline_ns()
        if deadline is None and not self.vm.input_pending():
            self.finish(RunState.HALTED, "HLT with no timer armed and no input: the CPU sleeps forever")
            return
        if self.wall_clock or deadline is None:
            self.vm.wait_until(deadline)  # real time passes: for the next tick or for input
        else:
            self.vm.clock.skip_to(deadline)
        self.vm.poll_input()
        self.vm.update_timers()

    def _hook_failed(self, exc: BaseException) -> None:
        if isinstance(exc, TripleFault):
            self.finish_triple_fault(str(exc))
        elif isinstance(exc, UnsupportedEvent):
            self.finish(RunState.GUEST_FAULT, str(exc))
        else:
            self.finish(RunState.VMM_ERROR, f"{type(exc).__name__}: {exc}")

    def result(self) -> RunResult:
        """How the run ended (or stands, if it is paused)."""
        wall = self.run_seconds
        rip, text = self.engine.describe_pc()
        exits = self.exit_count if self.state is RunState.RUNNING else self.final_exit_count
        return RunResult(self.state, self.status, self.message, rip, text,
                         [e.describe() for e in self.recent], exits, self.instructions, wall,
                         self.engine.fidelity_report())

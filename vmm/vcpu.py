"""The vCPU run loop: run the guest in instruction slices, and between them advance virtual time,
fire timers, inject interrupts when the guest's interrupt window is open, idle a halted CPU
straight to its next timer event, and enforce --timeout.

Exits are not handled here: engines report them, inside Unicorn's hooks (as KVM handles an exit in
the kernel), through the vCPU's ``ExitPath`` (vmm/exits.py). Where a debugger pauses the run is
``RunControl``'s (vmm/run_control.py); the loop only asks it.
"""
from __future__ import annotations

import threading
import time
from typing import Protocol

from emu.events import TripleFault, UnsupportedEvent
from emu.paging import BusError
from vmm.exits import ExitOps, ExitPath
from vmm.run_control import DEBUG_SLICE, RunControl
from vmm.run_state import RunResult, RunState, outside_ram

MAX_SLICE = 2_000_000   # instructions per counted run() when no timer is due
WALL_SLICE = 100_000    # instructions per run() under --wall-clock (the PIT is checked between)
STI = 0xFB


class Engine(ExitOps, Protocol):
    """A CPU virtualization technique: it turns Unicorn events into exits or hardware behaviour,
    and carries out what exit handlers ask of the guest (``ExitOps``)."""
    name: str

    def attach(self, vcpu: "Vcpu") -> None: ...
    def reset(self) -> None: ...
    def interrupt_window(self) -> bool: ...
    def inject_external(self, vector: int) -> None: ...
    def after_run(self) -> None: ...
    def machine_error(self, err: int) -> None: ...
    def fetch(self, linear: int) -> bytes: ...
    def describe_pc(self) -> tuple[int, str]: ...
    def fidelity_report(self) -> str: ...


class Vcpu:
    """One virtual CPU of a VM, driven by an engine and a hypervisor's exit-handler table."""

    def __init__(self, vm, engine: Engine, handlers, observers=(), timeout: float | None = None,
                 max_exits: int | None = None, wall_clock: bool = False):
        self.vm = vm
        self.cpu = vm.cpu
        self.engine = engine
        self.exits = ExitPath(self, handlers, observers, max_exits)
        self.control = RunControl(vm.cpu)
        self.timeout = timeout
        self.wall_clock = wall_clock
        self.state = RunState.RUNNING
        self.status: int | None = None
        self.message = ""
        self.halted = False
        self.interrupt_shadow = False
        self._window_step: bool | None = None   # stepping an IF-setting instruction (True: STI)
        self.final_exit_count = 0
        self.instructions = 0
        self.uncounted = False      # some slice ran uncounted: `instructions` is not all of it
        self.failed_at: tuple[int, str] | None = None  # where a failure ended the run
        self.run_seconds = 0.0
        self.quantum_end: int | None = None    # vmm/cpusched's grant: run to this many instructions
        self.sleep_until: int | None = None    # scheduled and halted: the virtual time it waits for
        self._deadline_epoch: int | None = None   # vm.reconfigurations when _deadline was found
        self._deadline: int | None = None
        self._deadline_exact = False
        vm.cpu.on_hook_error = self.fail
        vm.restore_hooks.append(self._forget_deadline)   # restored devices: deadlines moved
        engine.attach(self)

    @property
    def stopping(self) -> bool:
        return self.state is not RunState.RUNNING

    @property
    def exit_count(self) -> int:
        return self.exits.count

    # ----- how a run ends ---------------------------------------------------------------------
    def finish(self, state: RunState, message: str, status: int | None = None) -> None:
        """End the run (from a hook or the loop); the first reason given wins.

        Unicorn stops only at the end of the current translation block, so the instructions
        after a stopping exit still run: from here on their exits are neither handled nor
        counted (``ExitPath.take``), so their I/O reaches no device."""
        if self.state is RunState.RUNNING:
            self.state, self.message, self.status = state, message, status
            self.final_exit_count = self.exits.count
        self.cpu.stop()

    def guest_exit(self, value: int) -> None:
        """The debug-exit device's callback: the guest ends the run with a status."""
        self.finish(RunState.EXITED, f"guest wrote {value:#x} to the debug-exit port", value)

    def input_done(self) -> None:
        """The typed input script ran out and the guest's console has been quiet since."""
        self.finish(RunState.INPUT_DONE, "the --input script is typed and the console has been "
                                         "quiet for 100 ms of virtual time: the session ends")

    def guest_reset(self) -> None:
        """The board's reset line: the guest asked the machine to reboot; the run ends there."""
        self.finish(RunState.RESET, "the guest reset the machine (keyboard controller command "
                                    "0xFE or port 0x92 bit 0)")

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

    def run_quantum(self, instructions: int) -> int | None:
        """The scheduler's grant (vmm/cpusched): run at most ``instructions`` more, all counted,
        then yield. A halted CPU does not skip its time here: it returns how many ns of virtual time
        it sleeps until its next timer event (None if it did not go to sleep), and its time
        jumps there when it is next granted the CPU. --timeout is checked between grants."""
        if self.sleep_until is not None:
            self.vm.clock.skip_to(self.sleep_until)
            self.sleep_until = None
            self.vm.poll_input()
            self.vm.update_timers()
            self._forget_deadline()
        if self.timeout and self.run_seconds >= self.timeout:
            self.finish(RunState.TIMEOUT, f"--timeout {self.timeout:g} s expired")
        self.quantum_end = self.instructions + instructions
        try:
            self.resume()
        finally:
            self.quantum_end = None
        if self.sleep_until is None or self.stopping:
            return None
        return max(0, self.sleep_until - self.vm.clock.now_ns())

    def resume(self) -> None:
        """Run until the guest ends or something requests a pause (a debugger's stop).

        A pause requested before or during the call is consumed when it returns, never lost.
        --timeout counts only the time spent here, not time spent stopped in a debugger."""
        started = time.perf_counter()
        watchdog = self._watchdog()
        control = self.control
        try:
            while (self.state is RunState.RUNNING and not control.pause_requested
                   and self._granted()):
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
            control.pause_requested = False
            self.run_seconds += time.perf_counter() - started

    def _granted(self) -> bool:
        """Unscheduled: always. Scheduled: while the grant lasts and the CPU is not asleep."""
        end = self.quantum_end
        return end is None or (self.instructions < end and self.sleep_until is None)

    def _watchdog(self) -> threading.Timer | None:
        """--timeout: a timer thread ends the run. Unicorn may stop the CPU inside an
        instruction when asked from another thread (and would execute it again on resume), so
        this is the only stop that comes from outside, and it ends the run for good."""
        if not self.timeout or self.quantum_end is not None:
            return None
        expire = lambda: self.finish(RunState.TIMEOUT, f"--timeout {self.timeout:g} s expired")
        watchdog = threading.Timer(max(self.timeout - self.run_seconds, 0), expire)
        watchdog.daemon = True
        watchdog.start()
        return watchdog

    def _run_slice(self) -> None:
        budget = self._budget()
        self.uncounted = self.uncounted or not budget
        if self.wall_clock:
            err = self.cpu.run(budget)
        else:
            clock = self.vm.clock
            clock.running = True
            err = self.cpu.run(budget)
            clock.running = False
            clock.retire(self.cpu.executed())
        self.instructions += self.cpu.executed()
        self.control.count_steps(self.cpu.executed())
        self._update_timers()
        if self.cpu.hook_error is not None:
            self.fail(self.cpu.hook_error)
            return
        try:
            if err:
                self.engine.machine_error(err)
            elif self.state is RunState.RUNNING and not self.control.at_breakpoint():
                if self.engine.window_site_at(self.cpu.linear_pc()):
                    self._step_window_site()
                else:
                    self.engine.after_run()  # bt's callouts, vtx's stops: VMM work outside hooks
        except Exception as exc:  # noqa: BLE001 - the same boundary as a hook's
            self.fail(exc)

    def retire(self, count: int) -> None:
        """Instructions the VMM carried out itself (a translation callout, an instruction
        completed for an exit handler) retire like executed ones: in virtual time and steps."""
        self.instructions += count
        if not self.wall_clock:
            self.vm.clock.retire(count)
        self.control.count_steps(count)

    def _budget(self) -> int:
        """Instructions for the next run; 0 means an uncounted run that ends on its own."""
        if self.interrupt_shadow:
            self.interrupt_shadow = False
            return 1
        if self._window_step is not None:
            self.interrupt_shadow, self._window_step = self._window_step, None
            return 1
        self.engine.hold_interrupt(self.vm.irq_chip.has_interrupt())
        budget = self._timer_budget()
        stepping = self.control.slice_limit()  # a debugger's steps, still stopped by timers
        return budget if stepping is None else min(stepping, budget or stepping)

    def _timer_budget(self) -> int:
        if self.wall_clock:
            return WALL_SLICE
        if self.quantum_end is not None:   # scheduled: counted, and never past the grant
            limit = min(MAX_SLICE, self.quantum_end - self.instructions)
            deadline = self.vm.next_deadline_ns()
            return limit if deadline is None else min(limit, self.vm.clock.budget_until(deadline))
        precise = self.control.precise
        if self.vm.quiescent() and not precise and not self.cpu.mmio_retry:
            return 0  # nothing can interrupt or observe time: uncounted, full speed
        deadline = self._timer_deadline()
        limit = DEBUG_SLICE if precise else MAX_SLICE
        return limit if deadline is None else min(limit, self.vm.clock.budget_until(deadline))

    def _step_window_site(self) -> None:
        """The CPU stopped in front of an instruction that may set IF while an interrupt is
        held: run it alone (its stop lifted), then deliver if the window opened. After STI the
        interrupt waits one more instruction (the STI shadow)."""
        self.engine.hold_interrupt(False)
        self._window_step = self.engine.fetch(self.cpu.linear_pc())[:1] == bytes([STI])

    def _service_interrupts(self) -> None:
        chip = self.vm.irq_chip
        if self.interrupt_shadow or not chip.has_interrupt() or not self.engine.interrupt_window():
            return
        vector = chip.acknowledge()
        self.halted = False
        try:
            self.engine.inject_external(vector)
        except Exception as exc:  # noqa: BLE001 - the same boundary as a hook's
            self.fail(exc)

    def _idle(self) -> None:
        """HLT: jump virtual time to the next timer event, or end the run if nothing can wake us."""
        if self.interrupt_shadow and self.vm.irq_chip.has_interrupt():
            self.interrupt_shadow = False  # STI; HLT: the shadow ends with the HLT, which it wakes
            return
        if not self.engine.interrupt_window():
            self.finish(RunState.HALTED, "HLT with interrupts disabled: nothing can wake the CPU")
            return
        deadline = self._timer_deadline()
        if deadline is None and not self.vm.input_pending():
            self.finish(RunState.HALTED, "HLT with no timer armed and no input: the CPU sleeps forever")
            return
        if self.quantum_end is not None and deadline is not None and not self.wall_clock:
            self.sleep_until = deadline   # the scheduler runs others; run_quantum skips to it
            return
        if self.wall_clock or deadline is None:
            self.vm.wait_until(deadline)  # real time passes: for the next tick or for input
        else:
            self.vm.clock.skip_to(deadline)
        self.vm.poll_input()
        self.vm.update_timers()
        self._forget_deadline()

    def _forget_deadline(self) -> None:
        self._deadline_epoch = None

    def _timer_deadline(self) -> int | None:
        """The next timer deadline (vm.next_deadline_ns), recomputed only when a device was
        reprogrammed or timers were updated since: a deadline moves only then. It is *exact*
        (no timer can act before it) unless a timer counts without a deadline (a masked APIC
        timer still takes its expiries). With host input attached (micro always has the
        parent's) it is recomputed every time and never exact: the pause before each typed line
        follows the console, not a device register."""
        vm = self.vm
        if vm.input_sources:
            self._deadline_exact = False
            return vm.next_deadline_ns()
        if vm.reconfigurations != self._deadline_epoch:
            self._deadline_epoch = vm.reconfigurations
            timers = [(timer, timer.next_deadline_ns()) for timer in vm.timers]
            self._deadline = min((d for _, d in timers if d is not None), default=None)
            self._deadline_exact = all(d is not None or not timer.counting()
                                       for timer, d in timers)
        return self._deadline

    def _update_timers(self) -> None:
        """After a slice: fire the timers whose deadline passed. A slice that ended before an
        exact deadline (an exit, HLT, a kick) leaves every timer as it is, with no device work."""
        deadline = self._timer_deadline()
        if self._deadline_exact and (deadline is None or self.vm.clock.now_ns() < deadline):
            return
        self.vm.update_timers()
        self._forget_deadline()

    def fail(self, exc: BaseException) -> None:
        """The one error boundary of everything the VMM does for this vCPU (its hooks, callouts
        and stops after a run, event injection): the run ends now, in a defined state, and the
        report names the instruction the CPU stood at. The guest's own doing (a triple fault,
        an access with no memory behind it, an event mechanism not modelled) is a guest end;
        anything else is the VMM's failure (VMM_ERROR), never a traceback."""
        if self.state is not RunState.RUNNING:
            self.cpu.stop()
            return
        try:
            self.failed_at = self.engine.describe_pc()
        except Exception:  # noqa: BLE001 - the report then shows where the CPU stopped
            self.failed_at = None
        if isinstance(exc, TripleFault):
            self.finish_triple_fault(str(exc))
        elif isinstance(exc, UnsupportedEvent):
            self.finish(RunState.GUEST_FAULT, str(exc))
        elif isinstance(exc, BusError):
            kind = "write" if exc.write else "read"
            self.finish(RunState.GUEST_FAULT,
                        outside_ram(kind, exc.physical, exc.length, self.vm.memory.size))
        else:
            self.finish(RunState.VMM_ERROR, f"{type(exc).__name__}: {exc}")

    def result(self) -> RunResult:
        """How the run ended (or stands, if it is paused)."""
        if self.failed_at is not None and self.state is not RunState.RUNNING:
            rip, text = self.failed_at
        else:
            rip, text = self.engine.describe_pc()
        exits = self.exits.count if self.state is RunState.RUNNING else self.final_exit_count
        return RunResult(self.state, self.status, self.message, rip, text,
                         [e.describe() for e in self.exits.recent], exits, self.instructions,
                         self.run_seconds, self.engine.fidelity_report(), self.uncounted)

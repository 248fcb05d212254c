"""Execution control for debuggers: a VM run stop by stop, with breakpoints on guest addresses,
write watchpoints, breakpoints on VM exits, instruction stepping and deterministic replay.

``Debuggee`` drives a hypervisor's vCPU in precise (always counted) mode and records every exit.
Going back to an earlier exit restores the nearest snapshot at or before it and replays from
there: virtual time comes from executed instructions, so the same guest with the same input takes
the same exits in the same order. Snapshots are taken automatically every CHECKPOINT_EVERY exits
while the guest runs, and by name (``savevm``/``loadvm``); they hold the whole machine
(vmm/snapshot/), so a jump back costs at most CHECKPOINT_EVERY exits of replay, not the run
from boot.
The interactive debugger (vmm/debug/repl.py) and the GDB stub (vmm/debug/gdb/stub.py) sit on this.
"""
from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Callable

from emu.cpu import GPR_NAMES, SEG_NAMES
from vmm.run_state import RunResult, RunState
from vmm.snapshot import machine as snapshots
from vmm.snapshot.format import Snapshot
from vmm.vmcs import ExitReason, VmExit

WATCH_ACCESS = ("write", "read", "access")
CHECKPOINT_EVERY = 500  # exits between automatic snapshots


class StopKind(enum.Enum):
    ENTRY = "entry"
    BREAKPOINT = "breakpoint"
    WATCHPOINT = "watchpoint"
    EXIT = "exit"
    STEP = "step"
    INTERRUPTED = "interrupted"
    ENDED = "ended"


@dataclass
class Stop:
    """Why the guest is stopped, and what the stop is about."""
    kind: StopKind
    exit_number: int
    exit: VmExit | None = None
    breakpoint: int | None = None
    address: int | None = None
    old: bytes | None = None
    new: bytes | None = None
    result: RunResult | None = None
    is_write: bool = True          # watchpoints: the access that hit was a store

    def describe(self) -> str:
        if self.kind is StopKind.EXIT:
            return f"exit #{self.exit_number}: {self.exit.reason.name} ({int(self.exit.reason)})"
        if self.kind is StopKind.WATCHPOINT and not self.is_write:
            return f"watchpoint {self.breakpoint}: {self.address:#x} read: {self.new.hex(' ')}"
        if self.kind is StopKind.WATCHPOINT:
            return (f"watchpoint {self.breakpoint}: {self.address:#x}: "
                    f"{self.old.hex(' ')} -> {self.new.hex(' ')}")
        if self.kind is StopKind.BREAKPOINT:
            return f"breakpoint {self.breakpoint} at {self.address:#x}"
        if self.kind is StopKind.ENDED:
            return f"the guest ended: {self.result.state.value}: {self.result.message}"
        return self.kind.value


@dataclass
class Checkpoint:
    """A snapshot of the debuggee after exit ``exit_number``; ``extra`` is what the front end
    kept with it (``Debuggee.on_checkpoint``), handed back when it is restored."""
    exit_number: int
    snapshot: Snapshot
    extra: object = None


@dataclass(frozen=True)
class ExitFilter:
    """Which exits a breakpoint stops on: a reason plus optional port/CR/MSR/vector/RIP range."""
    reason: ExitReason | None = None
    port: int | None = None
    cr: int | None = None
    msr: int | None = None
    vector: int | None = None
    rip_range: tuple[int, int] | None = None

    def matches(self, exit: VmExit, ecx: int = 0) -> bool:
        checks = (
            (self.reason, lambda: exit.reason),
            (self.port, lambda: exit.port),
            (self.cr, lambda: exit.qualification & 0xF if exit.reason is ExitReason.CR_ACCESS
             else None),
            (self.msr, lambda: ecx if exit.reason in (ExitReason.MSR_READ, ExitReason.MSR_WRITE)
             else None),
            (self.vector, lambda: exit.intr_info & 0xFF if exit.intr_info is not None else None))
        if any(want is not None and get() != want for want, get in checks):
            return False
        return self.rip_range is None or self.rip_range[0] <= exit.rip <= self.rip_range[1]

    def describe(self) -> str:
        parts = [self.reason.name if self.reason is not None else "any exit"]
        for name in ("port", "cr", "msr", "vector"):
            if getattr(self, name) is not None:
                parts.append(f"{name} {getattr(self, name):#x}")
        if self.rip_range:
            parts.append(f"rip {self.rip_range[0]:#x}-{self.rip_range[1]:#x}")
        return " ".join(parts)


@dataclass
class Breakpoint:
    id: int
    kind: str                      # 'break' | 'watch' | 'exit'
    what: str
    address: int | None = None     # linear (break, watch)
    length: int = 0
    physical: int | None = None
    access: str = "write"          # watchpoints: 'write' | 'read' | 'access'
    exit_filter: ExitFilter | None = None
    hits: int = 0
    hook: int | None = field(default=None, repr=False)


class _ExitRecorder:
    """The debuggee's observer: records every exit and stops on exit breakpoints."""

    def __init__(self, debuggee: "Debuggee"):
        self.debuggee = debuggee

    def on_exit(self, vcpu, exit: VmExit) -> None:
        self.debuggee.history.append(exit)

    def on_entry(self, vcpu, exit: VmExit, outcome) -> None:
        self.debuggee.exit_handled(exit)


class Debuggee:
    """A guest run under control; see the module docstring."""

    def __init__(self, build: Callable[[list], object], image,
                 on_checkpoint: Callable[[], object] = lambda: None,
                 on_restart: Callable[[Checkpoint | None], None] = lambda checkpoint: None):
        """``on_checkpoint()`` returns what the front end keeps with a snapshot;
        ``on_restart(checkpoint)`` is told before the guest runs again, from boot (None) or
        from a snapshot."""
        self.build = build
        self.image = image
        self.on_checkpoint, self.on_restart = on_checkpoint, on_restart
        self.table: dict[int, Breakpoint] = {}
        self._next_id = 1
        self.history: list[VmExit] = []
        self.checkpoints: dict[int, Checkpoint] = {}
        self.named: dict[str, Checkpoint] = {}
        self.replayed = 0    # exits the last goto-exit replayed to reach its target
        self._boot()

    # ----- lifecycle ----------------------------------------------------------------------------
    def _boot(self, checkpoint: Checkpoint | None = None) -> None:
        self.hypervisor = self.build([_ExitRecorder(self)])
        self.vm = self.hypervisor.vm
        self.vcpu = self.hypervisor.vcpu
        self.cpu = self.vm.cpu
        self.engine = self.vcpu.engine
        self.control = self.vcpu.control
        self.control.precise = True
        self.on_restart(checkpoint)
        if checkpoint is None:
            self.history = []
            self.hypervisor.boot(self.image)
        else:
            snapshots.restore(self.hypervisor, [checkpoint.snapshot])
            del self.history[checkpoint.exit_number:]
        self._checkpoint_due = False
        self.ended: RunResult | None = None
        self._pending: Stop | None = None
        self._interrupted = False
        self._unwatched = False
        self._stop_at_exit: int | None = None
        self._lock = threading.Lock()
        number = self.exit_number
        self.stop = (Stop(StopKind.EXIT, number, exit=self.history[number - 1])
                     if checkpoint is not None and 0 < number <= len(self.history)
                     else Stop(StopKind.ENTRY, number))
        for bp in self.table.values():
            self._arm(bp)

    def close(self) -> None:
        self.hypervisor.close()

    @property
    def exit_number(self) -> int:
        return self.vcpu.exit_count

    # ----- breakpoints --------------------------------------------------------------------------
    def add_breakpoint(self, linear: int) -> int:
        return self._add(Breakpoint(0, "break", f"at {linear:#x}", address=linear & 0xFFFFFFFF))

    def add_watchpoint(self, linear: int, length: int = 4, access: str = "write") -> int:
        """Stop when the guest writes ('write'), reads ('read') or does either ('access') there."""
        if access not in WATCH_ACCESS:
            raise ValueError(f"a watchpoint watches {', '.join(WATCH_ACCESS)}, not {access!r}")
        if not 1 <= length <= 4096:
            raise ValueError(f"watch length must be 1..4096 bytes, not {length}")
        physical = self.translate(linear)
        if self.translate(linear + length - 1) - physical != length - 1:
            raise ValueError(f"{linear:#x}+{length} crosses into a discontiguous page")
        if not self.vm.memory.contains(physical, length):
            raise ValueError(f"{linear:#x} is guest-physical {physical:#x}, which is not RAM")
        what = {"write": "writes to", "read": "reads of", "access": "accesses to"}[access]
        return self._add(Breakpoint(0, "watch", f"{what} {linear:#x}+{length}", address=linear,
                                    length=length, physical=physical, access=access))

    def add_exit_breakpoint(self, flt: ExitFilter) -> int:
        return self._add(Breakpoint(0, "exit", flt.describe(), exit_filter=flt))

    def delete(self, bp_id: int | None = None) -> None:
        doomed = list(self.table) if bp_id is None else [bp_id]
        for key in doomed:
            bp = self.table.pop(key)  # KeyError names an unknown breakpoint
            if bp.hook is not None:
                self.cpu.unhook(bp.hook)
        self._sync_addresses()

    def breakpoints(self) -> list[Breakpoint]:
        return sorted(self.table.values(), key=lambda bp: bp.id)

    def _add(self, bp: Breakpoint) -> int:
        bp.id, self._next_id = self._next_id, self._next_id + 1
        self.table[bp.id] = bp
        self._arm(bp)
        return bp.id

    def _arm(self, bp: Breakpoint) -> None:
        if bp.kind == "watch":
            bp.hook = self.cpu.watch_memory(
                bp.physical, bp.physical + bp.length - 1,
                lambda address, size, is_write, bp=bp: self._watch_hit(bp, is_write),
                reads=bp.access != "write", writes=bp.access != "read")
        self._sync_addresses()

    def _sync_addresses(self, skip: int | None = None) -> None:
        self.control.set_breakpoints(bp.address for bp in self.table.values()
                                  if bp.kind == "break" and bp.address != skip)

    # ----- running ------------------------------------------------------------------------------
    def cont(self) -> Stop:
        return self._go(None)

    def stepi(self, n: int = 1) -> Stop:
        if n < 1:
            raise ValueError("stepi needs a positive count")
        return self._go(n)

    def next_exit(self) -> Stop:
        self._stop_at_exit = self.exit_number + 1
        return self._go(None)

    # ----- snapshots ----------------------------------------------------------------------------
    def save(self, name: str) -> Checkpoint:
        """savevm: the machine as it stands, kept under ``name`` for this session."""
        if self.ended is not None:
            raise ValueError("the guest has ended: there is no running machine to save")
        self.named[name] = self._checkpoint()
        return self.named[name]

    def load(self, name: str) -> Stop:
        """loadvm: put back the machine saved under ``name``."""
        if name not in self.named:
            known = ", ".join(sorted(self.named)) or "none yet (savevm NAME)"
            raise KeyError(f"no snapshot named {name!r}; saved: {known}")
        self.close()
        self._boot(self.named[name])
        return self.stop

    def _checkpoint(self) -> Checkpoint:
        return Checkpoint(self.exit_number, snapshots.capture(self.hypervisor),
                          self.on_checkpoint())

    def _nearest(self, n: int) -> Checkpoint | None:
        before = [c for c in (*self.checkpoints.values(), *self.named.values())
                  if c.exit_number <= n]
        return max(before, key=lambda c: c.exit_number, default=None)

    def goto_exit(self, n: int) -> Stop:
        """Restore the nearest snapshot at or before exit ``n`` (else boot), replay from there
        and stop right after exit ``n`` was handled (0: at the entry)."""
        if n < 0:
            raise ValueError("exit numbers start at 1 (0 is the entry)")
        self.close()
        checkpoint = self._nearest(n) if n else None
        self._boot(checkpoint)
        self.replayed = n - self.exit_number
        if n == self.exit_number:
            return self.stop
        self._stop_at_exit = n
        saved, self.table = self.table, {}
        for bp in saved.values():
            if bp.hook is not None:
                self.cpu.unhook(bp.hook)
        self._sync_addresses()
        try:
            return self._go(None)
        finally:
            self.table = saved
            for bp in saved.values():
                self._arm(bp)

    def reverse_exit(self) -> Stop:
        return self.goto_exit(max(self.exit_number - 1, 0))

    def interrupt(self) -> None:
        """Ask a running cont()/stepi() to stop; safe to call from another thread. A request
        that arrives between runs stops the next one before it executes anything."""
        self._interrupted = True
        self.control.interrupt()

    def _go(self, steps: int | None) -> Stop:
        if self.ended is not None:
            return self.stop
        self._pending = None
        if self._interrupted:
            self._interrupted = False
            self.stop = Stop(StopKind.INTERRUPTED, self.exit_number)
            return self.stop
        stepped = self._step_over_breakpoint()
        remaining = None if steps is None else steps - stepped
        if self._pending is None and self.vcpu.state is RunState.RUNNING and remaining != 0:
            self._run(remaining)
        self.stop = self._conclude()
        return self.stop

    def _run(self, steps: int | None) -> None:
        """Run; a pause that only takes an automatic snapshot resumes at once."""
        self.control.step(steps)
        try:
            self.vcpu.resume()
            while self._checkpoint_due and self._only_checkpoint_due(steps):
                self._checkpoint_due = False
                self.checkpoints[self.exit_number] = self._checkpoint()
                self.vcpu.resume()
        finally:
            self._checkpoint_due = False
            self.control.step(None)

    def _only_checkpoint_due(self, steps: int | None) -> bool:
        stepped_out = steps is not None and self.control.steps_left is None
        return (self._pending is None and not self._interrupted and not stepped_out
                and self.vcpu.state is RunState.RUNNING and self.control.breakpoint_hit is None)

    def _step_over_breakpoint(self) -> int:
        """Resuming at a breakpoint's address: execute that instruction with it disarmed."""
        pc = self.cpu.linear_pc()
        if pc not in self.control.breakpoints:
            return 0
        self._sync_addresses(skip=pc)
        try:
            self._run(1)
        finally:
            self._sync_addresses()
            self.control.breakpoint_hit = None
        return 1

    def _conclude(self) -> Stop:
        vcpu = self.vcpu
        if vcpu.state is not RunState.RUNNING:
            self.ended = vcpu.result()
            return Stop(StopKind.ENDED, self.exit_number, result=self.ended)
        if self._pending is not None and self._pending.kind is StopKind.WATCHPOINT:
            return self._finish_watch(self._pending)
        if self._pending is not None:
            return self._pending
        if self._interrupted:
            self._interrupted = False
            return Stop(StopKind.INTERRUPTED, self.exit_number)
        if self.control.breakpoint_hit is not None:
            address, self.control.breakpoint_hit = self.control.breakpoint_hit, None
            bp = next((b for b in self.table.values() if b.address == address and b.kind == "break"),
                      None)
            if bp is not None:
                bp.hits += 1
                return Stop(StopKind.BREAKPOINT, self.exit_number, breakpoint=bp.id, address=address)
        return Stop(StopKind.STEP, self.exit_number)

    def _request(self, stop: Stop) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = stop
        self.control.request_pause()

    def exit_handled(self, exit: VmExit) -> None:
        number = self.exit_number
        if number % CHECKPOINT_EVERY == 0 and number not in self.checkpoints:
            self._checkpoint_due = True
            self.control.request_pause()
        if self._stop_at_exit is not None and self.exit_number >= self._stop_at_exit:
            self._stop_at_exit = None
            self._request(Stop(StopKind.EXIT, self.exit_number, exit=exit))
            return
        ecx = self.cpu.gpr[1] & 0xFFFFFFFF
        for bp in self.table.values():
            if bp.kind == "exit" and bp.exit_filter.matches(exit, ecx):
                bp.hits += 1
                self._request(Stop(StopKind.EXIT, self.exit_number, exit=exit, breakpoint=bp.id))
                return

    def _watch_hit(self, bp: Breakpoint, is_write: bool) -> None:
        """A guest access to a watched range is about to happen: note the bytes and stop.
        Unicorn stops on the accessing instruction, rolled back but with a store already done,
        so _finish_watch puts the old bytes back and executes the instruction once more,
        unwatched: the stop then shows old -> new after it, as gdb does."""
        if self._pending is not None or self._unwatched:
            return
        bp.hits += 1
        old = self.vm.memory.read(bp.physical, bp.length)
        self._request(Stop(StopKind.WATCHPOINT, self.exit_number, breakpoint=bp.id,
                           address=bp.address, old=old, is_write=is_write))

    def _finish_watch(self, stop: Stop) -> Stop:
        bp = self.table[stop.breakpoint]
        self.vm.memory.write(bp.physical, stop.old)
        self._pending, self._unwatched = None, True
        try:
            self._run(1)
        finally:
            self._unwatched = False
        if self.vcpu.state is not RunState.RUNNING:
            return self._conclude()
        stop.new = self.vm.memory.read(bp.physical, bp.length)
        stop.exit_number = self.exit_number
        return stop

    # ----- state --------------------------------------------------------------------------------
    def translate(self, linear: int) -> int:
        return self.vm.lin.translate(linear, touch=False)

    def read_virtual(self, address: int, length: int) -> bytes:
        return self.vm.lin.read(address, length, touch=False)

    def write_virtual(self, address: int, data: bytes) -> None:
        self.vm.lin.write(address, data)
        self.cpu.flush_translations()

    def read_physical(self, address: int, length: int) -> bytes:
        return self.vm.memory.read(address, length)

    def write_physical(self, address: int, data: bytes) -> None:
        self.vm.memory.write(address, data)
        self.cpu.flush_translations()

    def real_registers(self) -> dict[str, int]:
        cpu = self.cpu
        regs = {name: cpu.gpr[i] & 0xFFFFFFFF for i, name in enumerate(GPR_NAMES)}
        regs.update(eip=cpu.eip, eflags=cpu.eflags, cpl=cpu.cpl)
        regs.update({name: cpu.segs[i].selector for i, name in enumerate(SEG_NAMES)})
        regs.update({f"cr{n}": cpu.cr[n] & 0xFFFFFFFF for n in (0, 2, 3, 4)})
        return regs

    def registers(self) -> dict[str, int]:
        """The registers as the guest believes them to be (shadow state where the engine has it)."""
        regs = self.real_registers()
        view = getattr(self.engine, "deprivileged", None)
        if view is None:
            return regs
        state = view.state
        regs.update(eflags=view.view.flags(), cpl=view.guest_cpl(), cr0=state.cr0, cr3=state.cr3,
                    cr4=state.cr4)
        regs.update({name: view.view.selector(i) for i, name in enumerate(SEG_NAMES)})
        return regs

    def set_register(self, name: str, value: int) -> None:
        """Write a register as the guest sees it (through the shadow state where there is one)."""
        cpu, guest = self.cpu, getattr(self.engine, "deprivileged", None)
        if name in GPR_NAMES:
            cpu.gpr[GPR_NAMES.index(name)] = value & 0xFFFFFFFF
        elif name == "eip":
            cpu.eip = value
        elif name == "eflags" and guest is not None:
            guest.view.set_flags(value)
        elif name == "eflags":
            cpu.eflags = value
        elif name in ("cr0", "cr2", "cr3", "cr4"):
            (guest or cpu).write_cr(int(name[2]), value)
        else:
            raise KeyError(f"register {name!r} cannot be written")


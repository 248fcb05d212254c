"""VM exits in words, for the debugger: what each exit handler did (registers it changed, the
device register an I/O exit reached, from vmm/exit_decoding.py), the exit history, and the report
printed at every debugger stop.
``ExitNotes`` is the observer that writes down what each handler did as the exit is handled.
"""
from __future__ import annotations

from collections import Counter

from emu.cpu import CS
from emu.events import vector_name
from vmm.debug import views
from vmm.debug.debuggee import StopKind
from vmm.debug.symbols import NO_SYMBOLS, SymbolTable
from vmm.exit_decoding import io_action, port_target, qualification
from vmm.vmcs import ExitReason, VmExit

R = ExitReason
WATCHED = ("cr0", "cr2", "cr3", "cr4", "gdtr.base", "gdtr.limit", "idtr.base", "idtr.limit",
           "ldtr.base", "tr", "cpl", "cs", "ss", "ds", "es", "fs", "gs")
GPR_RESULTS = ("eax", "ebx", "ecx", "edx")
IOPL_SHIFT = 12
SHORT_REASONS = {"IO": R.IO_INSTRUCTION, "CR": R.CR_ACCESS, "DR": R.DR_ACCESS,
                 "EXCEPTION": R.EXCEPTION_NMI, "RDMSR": R.MSR_READ, "WRMSR": R.MSR_WRITE}


# ----- what the handler did ---------------------------------------------------------------------
def register_changes(before: dict, after: dict, exit: VmExit) -> list[str]:
    """Guest-visible state the handler changed: control and descriptor-table registers, CPL,
    selectors, IF/IOPL, result registers of an emulated instruction, a transfer of control."""
    changes = [f"{name} {before[name]:#x} -> {after[name]:#x}" for name in WATCHED
               if name in before and before[name] != after.get(name)]
    for name, shift, mask in (("IF", 9, 1), ("IOPL", IOPL_SHIFT, 3)):
        old, new = (before["eflags"] >> shift) & mask, (after["eflags"] >> shift) & mask
        if old != new:
            changes.append(f"{name} {old} -> {new}")
    changes += [f"{name} {before[name]:#x} -> {after[name]:#x}" for name in GPR_RESULTS
                if before[name] != after[name]]
    stepped = (exit.rip, (exit.rip + exit.insn_len) & 0xFFFFFFFF)
    if after["eip"] not in stepped or after["cs"] != before["cs"]:
        changes.append(f"continues at {after['cs']:04x}:{after['eip']:08x}")
    return changes


def handler_action(exit: VmExit, target: str, before: dict, after: dict, outcome) -> str:
    """One line: what the handler did with this exit."""
    if exit.reason is R.IO_INSTRUCTION:
        return io_action(exit, target)
    words = [what_was_handled(exit, before, after)]
    changes = register_changes(before, after, exit)
    if changes:
        words.append(", ".join(changes))
    else:
        words.append("passed through to the CPU" if exit.reason is R.CPUID
                     else "no guest-visible register changed")
    if outcome is not None and outcome.value != "resume":
        words.append(f"outcome {outcome.value.upper()}")
    return ": ".join(w for w in words if w)


def what_was_handled(exit: VmExit, before: dict, after: dict) -> str:
    if exit.insn is not None:
        return f"emulated `{exit.insn}`"
    if exit.reason is R.EXCEPTION_NMI and exit.intr_info is not None:
        table = "IDT" if after["cr0"] & 1 else "IVT"
        return f"reflected {vector_name(exit.intr_info & 0xFF)} through the guest's {table}"
    if exit.reason is R.CPUID:
        return f"CPUID leaf {before['eax']:#x}"
    return ""


def instruction_at_exit(engine, exit: VmExit, symbols: SymbolTable = NO_SYMBOLS) -> str:
    """The instruction that caused the exit, decoded while CS and the code size are still the
    ones it ran under (the engine records the bytes of INT n / INT3 / INTO itself)."""
    cpu = engine.cpu
    base = cpu.segs[CS].base
    if exit.insn is not None:
        return f"{exit.insn.raw.hex(' ')}  {views.instruction_text(exit.insn, symbols, base)}"
    code = exit.insn_bytes or engine.fetch((base + exit.rip) & 0xFFFFFFFF)
    insn = engine.disasm.decode(code, exit.rip, cpu.code_bits) if code else None
    if insn is None:
        return "(the instruction cannot be read)"
    return f"{insn.raw.hex(' ')}  {views.instruction_text(insn, symbols, base)}"


class ExitNotes:
    """Observer: for each exit, the instruction that caused it with the symbol of its address
    and the device register it hits (all found before the handler runs: the handler changes CS,
    the mode and device state) and what the handler did. Notes are kept by exit number;
    ``registers`` returns the guest's registers (``vmm.debug.views.snapshot``)."""

    def __init__(self, registers, symbols: SymbolTable = NO_SYMBOLS):
        self.registers = registers
        self.symbols = symbols
        self.instructions: dict[int, str] = {}
        self.places: dict[int, str] = {}
        self.actions: dict[int, str] = {}
        self._before: dict = {}
        self._target = ""

    def reset(self) -> None:
        self.instructions.clear()
        self.places.clear()
        self.actions.clear()

    def forget_after(self, number: int) -> None:
        """A snapshot taken after exit ``number`` was restored: later notes are of the future."""
        for notes in (self.instructions, self.places, self.actions):
            for later in [n for n in notes if n > number]:
                del notes[later]

    def on_exit(self, vcpu, exit: VmExit) -> None:
        self._before = self.registers()
        number = vcpu.exit_count
        self.instructions[number] = instruction_at_exit(vcpu.engine, exit, self.symbols)
        linear = (vcpu.engine.cpu.segs[CS].base + exit.rip) & 0xFFFFFFFF
        self.places[number] = self.symbols.tag(linear)
        if exit.reason is R.IO_INSTRUCTION:
            self._target = port_target(vcpu.vm.pio, exit.port, exit.is_in, exit.value or 0)

    def on_entry(self, vcpu, exit: VmExit, outcome) -> None:
        self.actions[vcpu.exit_count] = handler_action(exit, self._target, self._before,
                                                       self.registers(), outcome)

    def instruction(self, number: int) -> str:
        return self.instructions.get(number, "")

    def place(self, number: int) -> str:
        """' <start+6>': the symbol of the exit's guest RIP, or ''."""
        return self.places.get(number, "")

    def action(self, number: int) -> str:
        return self.actions.get(number, "")


# ----- history ----------------------------------------------------------------------------------
def exit_line(number: int, exit: VmExit, notes: ExitNotes) -> str:
    detail = qualification(exit)
    text = f"#{number:<6} {exit.reason.name:<18} rip {exit.rip:#010x}"
    text += f"  {detail}" if detail else ""
    action = notes.action(number)
    return text + (f"\n{'':8}{action}" if action else "")


# ----- stops ------------------------------------------------------------------------------------
def stop_report(debuggee, stop, notes: ExitNotes, symbols: SymbolTable = NO_SYMBOLS) -> str:
    """What the debugger prints when the guest stops: why, then where (=> the next instruction),
    addresses followed by their symbols."""
    kind = stop.kind
    if kind is StopKind.ENDED:
        return (stop.result.report() + "\nThe guest has ended; its final state can be "
                "inspected (info registers, x, ...).")
    if kind is StopKind.EXIT:
        lines = exit_stop(debuggee, stop, notes)
    elif kind is StopKind.WATCHPOINT:
        lines = watch_stop(debuggee, stop, symbols)
    elif kind is StopKind.BREAKPOINT:
        lines = [f"Breakpoint {stop.breakpoint}, at {stop.address:#x}{symbols.tag(stop.address)} "
                 f"({since_boot(stop.exit_number)})"]
    elif kind is StopKind.ENTRY:
        lines = ["Stopped at the entry, before the guest's first instruction"]
    else:
        lines = [f"{'Stepped' if kind is StopKind.STEP else 'Interrupted'} "
                 f"({since_boot(stop.exit_number)})"]
    return "\n".join(lines + [f"=> {views.location(debuggee, symbols)}"])


def exit_stop(debuggee, stop, notes: ExitNotes) -> list[str]:
    """Reason and SDM number, decoded qualification, guest RIP and instruction, handler action."""
    exit = stop.exit
    why = f", breakpoint {stop.breakpoint}" if stop.breakpoint is not None else ""
    lines = [f"Exit #{stop.exit_number}: {exit.reason.name} ({int(exit.reason)}){why}"]
    detail = qualification(exit)
    if detail:
        lines.append(f"  qualification: {detail}")
    number = stop.exit_number
    lines.append(f"  guest RIP {exit.rip:#010x}{notes.place(number)}: {notes.instruction(number)}")
    action = notes.action(number)
    if action:
        lines.append(f"  handler: {action}")
    return lines


def watch_stop(debuggee, stop, symbols: SymbolTable) -> list[str]:
    new = stop.new if stop.new is not None else debuggee.read_virtual(stop.address, len(stop.old))
    lines = [f"Watchpoint {stop.breakpoint}: {len(stop.old)} bytes at {stop.address:#x}"
             f"{symbols.tag(stop.address)} ({since_boot(stop.exit_number)})"]
    for label, data in (("old", stop.old), ("new", new)):
        value = int.from_bytes(data, "little")
        number = f" = {value:#x} ({value})" if len(data) in (1, 2, 4, 8) else ""
        lines.append(f"  {label} {data.hex(' ')}{number}")
    return lines


def since_boot(exits: int) -> str:
    return f"{exits} exit{'' if exits == 1 else 's'} since boot"


def history_report(history: list[VmExit], notes: ExitNotes, last: int) -> str:
    """`info exits`: the total, the last ``last`` exits, and the count per reason."""
    lines = [since_boot(len(history)) + (f"; the last {min(last, len(history))}:"
                                         if history else "")]
    start = max(len(history) - last, 0)
    lines += [exit_line(n, history[n - 1], notes) for n in range(start + 1, len(history) + 1)]
    counts = Counter(exit.reason for exit in history)
    if counts:
        lines.append("exits per reason:")
        lines += [f"  {reason.name:<22} ({int(reason):>2}) {count:>8}"
                  for reason, count in counts.most_common()]
    return "\n".join(lines)


def reason_by_name(text: str) -> ExitReason:
    """An exit reason by SDM number or name: case-insensitive, a unique prefix, or a short name
    (io, cr, dr, exception, rdmsr, wrmsr)."""
    if text[:1].isdigit():
        try:
            return ExitReason(int(text, 0))
        except ValueError:
            raise ValueError(f"no exit reason number {text} in SDM Appendix C") from None
    upper = text.upper().replace("-", "_")
    if upper in SHORT_REASONS:
        return SHORT_REASONS[upper]
    if upper in ExitReason.__members__:
        return ExitReason[upper]
    matches = [r for r in ExitReason if r.name.startswith(upper)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(r.name for r in (matches or ExitReason))
    raise ValueError(f"unknown exit reason {text!r}; one of: {known}")



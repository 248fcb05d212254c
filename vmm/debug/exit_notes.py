"""VM exits in words, for the debugger: SDM exit qualifications decoded (Intel SDM Vol. 3,
Tables 28-1 to 28-5 and 25-19), what the exit handler did, with devices named by the bus and
their registers by the 16550, 8259A and 8254 datasheet names (``OUT 0x3f8 <- 0x48 'H' ->
uart16550 THR``), the exit history, and the report printed at every debugger stop.
``ExitNotes`` is the observer that writes down what each handler did as the exit is handled.
"""
from __future__ import annotations

from collections import Counter

from emu.cpu import CS
from emu.events import EXCEPTION_NAMES, vector_name
from vmm.debug import views
from vmm.debug.debuggee import StopKind
from vmm.devices import pic8259
from vmm.devices.pic8259 import Pic8259
from vmm.devices.pit8254 import Pit8254
from vmm.devices.uart16550 import LCR_DLAB, Uart16550
from vmm.vmcs import ExitReason, VmExit

R = ExitReason
UART_READ = ("RBR", "IER", "IIR", "LCR", "MCR", "LSR", "MSR", "SCR")
UART_WRITE = ("THR", "IER", "FCR", "LCR", "MCR", "LSR", "MSR", "SCR")
PIT_MODES = ("interrupt on terminal count", "hardware retriggerable one-shot", "rate generator",
             "square wave", "software triggered strobe", "hardware triggered strobe",
             "rate generator", "square wave")
PIT_ACCESS = ("counter latch", "lobyte", "hibyte", "lobyte/hibyte")
GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
EVENT_TYPES = {0: "external interrupt", 2: "NMI", 3: "hardware exception",
               4: "software interrupt", 5: "privileged software exception",
               6: "software exception"}
WATCHED = ("cr0", "cr2", "cr3", "cr4", "gdtr.base", "gdtr.limit", "idtr.base", "idtr.limit",
           "ldtr.base", "tr", "cpl", "cs", "ss", "ds", "es", "fs", "gs")
GPR_RESULTS = ("eax", "ebx", "ecx", "edx")
IOPL_SHIFT = 12
SHORT_REASONS = {"IO": R.IO_INSTRUCTION, "CR": R.CR_ACCESS, "DR": R.DR_ACCESS,
                 "EXCEPTION": R.EXCEPTION_NMI, "RDMSR": R.MSR_READ, "WRMSR": R.MSR_WRITE}
DATA_REGISTERS = (" THR", " RBR", "debug-console")


# ----- qualifications ---------------------------------------------------------------------------
def qualification(exit: VmExit) -> str:
    """The exit qualification (and interruption information) as the SDM defines its fields."""
    decoder = QUALIFICATIONS.get(exit.reason)
    if decoder is not None:
        return decoder(exit)
    return f"qualification {exit.qualification:#x}" if exit.qualification else ""


def io_qualification(exit: VmExit) -> str:
    """SDM Table 28-5: size, direction, string, REP, operand encoding, port."""
    q = exit.qualification
    size = (q & 7) + 1
    parts = [f"port {q >> 16:#x}", f"{size} byte{'s' if size > 1 else ''}",
             "in" if q & 8 else "out", "immediate port" if q & 0x40 else "port in dx"]
    parts += [name for bit, name in ((0x10, "string"), (0x20, "rep")) if q & bit]
    return ", ".join(parts)


def cr_qualification(exit: VmExit) -> str:
    """SDM Table 28-3: CR number, access type, general register, LMSW source data."""
    q = exit.qualification
    cr, access, gpr = q & 0xF, (q >> 4) & 3, GPRS[(q >> 8) & 7]
    if access == 0:
        return f"CR{cr}, MOV to CR from {gpr}"
    if access == 1:
        return f"CR{cr}, MOV from CR to {gpr}"
    if access == 2:
        return "CR0, CLTS"
    return f"CR0, LMSW source {q >> 16:#06x}"


def dr_qualification(exit: VmExit) -> str:
    """SDM Table 28-4: debug register number, direction, general register."""
    q = exit.qualification
    direction = "MOV from DR to" if q & 0x10 else "MOV to DR from"
    return f"DR{q & 7}, {direction} {GPRS[(q >> 8) & 7]}"


def event_qualification(exit: VmExit) -> str:
    """SDM Table 25-19 (interruption information) plus the error code and #PF's linear address."""
    info = exit.intr_info
    if info is None:
        return f"qualification {exit.qualification:#x}"
    vector = info & 0xFF
    kind = EVENT_TYPES.get((info >> 8) & 7, f"type {(info >> 8) & 7}")
    name = EXCEPTION_NAMES.get(vector)
    text = f"vector {vector:#x}{f' {name}' if name else ''}, {kind}"
    if info & (1 << 11) and exit.error_code is not None:
        text += f", error code {exit.error_code:#x}"
    if vector == 14:
        text += f", linear address {exit.qualification:#010x}"
    return text


def address_qualification(exit: VmExit) -> str:
    """INVLPG: the linear address; descriptor-table exits: the displacement (SDM Table 28-1)."""
    name = "linear address" if exit.reason is R.INVLPG else "displacement"
    return f"{name} {exit.qualification:#x}"


QUALIFICATIONS = {R.IO_INSTRUCTION: io_qualification, R.CR_ACCESS: cr_qualification,
                  R.DR_ACCESS: dr_qualification, R.EXCEPTION_NMI: event_qualification,
                  R.INVLPG: address_qualification, R.GDTR_IDTR_ACCESS: address_qualification,
                  R.LDTR_TR_ACCESS: address_qualification}


# ----- device registers -------------------------------------------------------------------------
def uart_register(uart: Uart16550, offset: int, is_in: bool, value: int) -> str:
    if uart.lcr & LCR_DLAB and offset in (0, 1):
        return ("DLL", "DLM")[offset]
    return (UART_READ if is_in else UART_WRITE)[offset & 7]


def pic_register(pic: Pic8259, offset: int, is_in: bool, value: int) -> str:
    """8259A: the even port takes ICW1/OCW2/OCW3 and reads IRR or ISR; the odd one ICW2-4/OCW1."""
    if offset & 1:
        step = pic._init_step  # which ICW the chip expects next (read before the write lands)
        return "IMR" if is_in else ("OCW1 (IMR)" if step == pic8259.OPERATIONAL else f"ICW{step}")
    if is_in:
        return "ISR" if pic._read_isr else "IRR"
    if value & pic8259.ICW1_INIT:
        return "ICW1"
    return "OCW3" if value & pic8259.OCW3_SELECT else "OCW2"


def pit_register(pit: Pit8254, offset: int, is_in: bool, value: int) -> str:
    """8254: counters 0-2 and the control word register (mode, access, read-back decoded)."""
    if offset != 3:
        return f"counter {offset}"
    if is_in:
        return "control word (not readable)"
    counter, access, mode = value >> 6, (value >> 4) & 3, (value >> 1) & 7
    if counter == 3:
        return "control word: read-back command"
    if access == 0:
        return f"control word: counter {counter} latch"
    return (f"control word: counter {counter}, {PIT_ACCESS[access]}, mode {mode} "
            f"({PIT_MODES[mode]})")


REGISTER_NAMERS = {Uart16550: uart_register, Pic8259: pic_register, Pit8254: pit_register}


def port_target(bus, port: int, is_in: bool, value: int) -> str:
    """'uart16550 THR': the device the bus routes ``port`` to, and the register it hits."""
    hit = bus.lookup(port)
    if hit is None:
        return "unclaimed port (reads all-ones, writes dropped)"
    device, offset = hit
    namer = REGISTER_NAMERS.get(type(device))
    register = namer(device, offset, is_in, value) if namer else ""
    return f"{device.name} {register}".rstrip()


def show_value(value: int, size: int, target: str) -> str:
    """The value in hex, and as a character when it goes through a data register."""
    text = f"{value:#0{2 + 2 * size}x}"
    if target.endswith(DATA_REGISTERS) and (32 <= value < 127 or value in (9, 10, 13)):
        text += " " + repr(chr(value))
    return text


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


def io_action(exit: VmExit, target: str) -> str:
    """`OUT 0x3f8 <- 0x48 'H' -> uart16550 THR` / `IN 0x3fd -> 0x60 <- uart16550 LSR`."""
    if exit.is_in:
        value = "?" if exit.value is None else show_value(exit.value, exit.size, target)
        return f"IN {exit.port:#x} -> {value} <- {target}"
    return f"OUT {exit.port:#x} <- {show_value(exit.value, exit.size, target)} -> {target}"


def handled_summary(vm, exit: VmExit) -> str:
    """What the handler did, from the exit record alone (for traces; no register snapshots)."""
    if exit.reason is R.IO_INSTRUCTION:
        return io_action(exit, port_target(vm.pio, exit.port, exit.is_in, exit.value or 0))
    if exit.insn is not None:
        return f"emulated `{exit.insn}`"
    if exit.reason is R.EXCEPTION_NMI and exit.intr_info is not None:
        return f"reflected {vector_name(exit.intr_info & 0xFF)} into the guest"
    return exit.reason.name


def what_was_handled(exit: VmExit, before: dict, after: dict) -> str:
    if exit.insn is not None:
        return f"emulated `{exit.insn}`"
    if exit.reason is R.EXCEPTION_NMI and exit.intr_info is not None:
        table = "IDT" if after["cr0"] & 1 else "IVT"
        return f"reflected {vector_name(exit.intr_info & 0xFF)} through the guest's {table}"
    if exit.reason is R.CPUID:
        return f"CPUID leaf {before['eax']:#x}"
    return ""


def instruction_at_exit(engine, exit: VmExit) -> str:
    """The instruction that caused the exit, decoded while CS and the code size are still the
    ones it ran under (the engine records the bytes of INT n / INT3 / INTO itself)."""
    if exit.insn is not None:
        return f"{exit.insn.raw.hex(' ')}  {exit.insn}"
    cpu = engine.cpu
    code = exit.insn_bytes or engine.fetch((cpu.segs[CS].base + exit.rip) & 0xFFFFFFFF)
    insn = engine.disasm.decode(code, exit.rip, cpu.code_bits) if code else None
    if insn is None:
        return "(the instruction cannot be read)"
    return f"{insn.raw.hex(' ')}  {insn}"


class ExitNotes:
    """Observer: for each exit, the instruction that caused it and the device register it hits
    (both found before the handler runs: the handler changes CS, the mode and device state) and
    what the handler did. Notes are kept by exit number; ``registers`` returns the guest's
    registers (``vmm.debug.views.snapshot``)."""

    def __init__(self, registers):
        self.registers = registers
        self.instructions: dict[int, str] = {}
        self.actions: dict[int, str] = {}
        self._before: dict = {}
        self._target = ""

    def reset(self) -> None:
        self.instructions.clear()
        self.actions.clear()

    def on_exit(self, vcpu, exit: VmExit) -> None:
        self._before = self.registers()
        self.instructions[vcpu.exit_count] = instruction_at_exit(vcpu.engine, exit)
        if exit.reason is R.IO_INSTRUCTION:
            self._target = port_target(vcpu.vm.pio, exit.port, exit.is_in, exit.value or 0)

    def on_entry(self, vcpu, exit: VmExit, outcome) -> None:
        self.actions[vcpu.exit_count] = handler_action(exit, self._target, self._before,
                                                       self.registers(), outcome)

    def instruction(self, number: int) -> str:
        return self.instructions.get(number, "")

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
def stop_report(debuggee, stop, notes: ExitNotes) -> str:
    """What the debugger prints when the guest stops: why, then where (=> the next instruction)."""
    kind = stop.kind
    if kind is StopKind.ENDED:
        return (stop.result.report() + "\nThe guest has ended; its final state can be "
                "inspected (info registers, x, ...).")
    if kind is StopKind.EXIT:
        lines = exit_stop(debuggee, stop, notes)
    elif kind is StopKind.WATCHPOINT:
        lines = watch_stop(debuggee, stop)
    elif kind is StopKind.BREAKPOINT:
        lines = [f"Breakpoint {stop.breakpoint}, at {stop.address:#x} "
                 f"({since_boot(stop.exit_number)})"]
    elif kind is StopKind.ENTRY:
        lines = ["Stopped at the entry, before the guest's first instruction"]
    else:
        lines = [f"{'Stepped' if kind is StopKind.STEP else 'Interrupted'} "
                 f"({since_boot(stop.exit_number)})"]
    return "\n".join(lines + [f"=> {views.location(debuggee)}"])


def exit_stop(debuggee, stop, notes: ExitNotes) -> list[str]:
    """Reason and SDM number, decoded qualification, guest RIP and instruction, handler action."""
    exit = stop.exit
    why = f", breakpoint {stop.breakpoint}" if stop.breakpoint is not None else ""
    lines = [f"Exit #{stop.exit_number}: {exit.reason.name} ({int(exit.reason)}){why}"]
    detail = qualification(exit)
    if detail:
        lines.append(f"  qualification: {detail}")
    lines.append(f"  guest RIP {exit.rip:#010x}: {notes.instruction(stop.exit_number)}")
    action = notes.action(stop.exit_number)
    if action:
        lines.append(f"  handler: {action}")
    return lines


def watch_stop(debuggee, stop) -> list[str]:
    new = stop.new if stop.new is not None else debuggee.read_virtual(stop.address, len(stop.old))
    lines = [f"Watchpoint {stop.breakpoint}: {len(stop.old)} bytes at {stop.address:#x} "
             f"({since_boot(stop.exit_number)})"]
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


__all__ = ["ExitNotes", "qualification", "history_report", "exit_line", "reason_by_name",
           "stop_report"]

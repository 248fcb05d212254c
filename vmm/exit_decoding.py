"""VM exits in words: SDM exit qualifications decoded (Intel SDM Vol. 3, Tables 28-1 to 28-5 and
25-19), and the device register an I/O exit reached, named as the 16550, 8259A and 8254
datasheets name them (``OUT 0x3f8 <- 0x48 'H' -> uart16550 THR``). Traces, statistics and the
debugger read them; nothing here changes an exit.
"""
from __future__ import annotations

from emu.events import EXCEPTION_NAMES, vector_name
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


def apic_access_qualification(exit: VmExit) -> str:
    """SDM Table 28-6 (linear accesses): the offset in the APIC page, the access type."""
    q = exit.qualification
    access = {0: "data read", 1: "data write", 2: "instruction fetch"}.get(q >> 12 & 0xF,
                                                                          f"type {q >> 12 & 0xF}")
    return f"APIC page offset {q & 0xFFF:#05x}, linear {access}"


def apic_write_qualification(exit: VmExit) -> str:
    """SDM 28.2.1: an APIC-write exit's qualification is the offset of the register written."""
    return f"APIC register {exit.qualification & 0xFFF:#05x} written"


QUALIFICATIONS = {R.IO_INSTRUCTION: io_qualification, R.APIC_ACCESS: apic_access_qualification,
                  R.APIC_WRITE: apic_write_qualification, R.CR_ACCESS: cr_qualification,
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

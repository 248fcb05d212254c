"""Machine state for the debugger, formatted: registers as the guest sees them beside the real
CPU's, memory dumps, disassembly, the GDT and IDT (Intel SDM Vol. 3, 3.4.5 and 6.11), 32-bit
page-table walks (SDM 4.3), the VMCS-like guest-state area, and the device registers (16550,
8259A and 8254 datasheet names). Code addresses and branch targets are followed by the guest's
symbol, as gdb prints them (``<start+6>``). Everything here only reads: no accessed/dirty bit
is set.
"""
from __future__ import annotations

import dataclasses
import enum
import struct

from emu.cpu import GPR_NAMES, SEG_NAMES
from emu.paging import BusError, Fault
from emu.segments import Descriptor
from vmm.devices.debug import NullDevice
from vmm.devices.pic8259 import Pic8259
from vmm.devices.pit8254 import Pit8254
from vmm.debug.symbols import NO_SYMBOLS, SymbolTable
from vmm.devices.uart16550 import Uart16550

EFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
               (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"))
CR0_BITS = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"),
            (18, "AM"), (29, "NW"), (30, "CD"), (31, "PG"))
CR4_BITS = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"),
            (7, "PGE"), (9, "OSFXSR"))
PAGE_BITS = ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"),
             (7, "PS"), (8, "G"))
SYSTEM_TYPES = {0x1: "16-bit TSS (available)", 0x2: "LDT", 0x3: "16-bit TSS (busy)",
                0x4: "16-bit call gate", 0x5: "task gate", 0x6: "16-bit interrupt gate",
                0x7: "16-bit trap gate", 0x9: "32-bit TSS (available)", 0xB: "32-bit TSS (busy)",
                0xC: "32-bit call gate", 0xE: "32-bit interrupt gate", 0xF: "32-bit trap gate"}
UNIT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
RESET_GDTR = (0, 0xFFFF)
NEAR_BRANCHES = ("j", "call", "loop")  # mnemonics whose one immediate operand is a target


def bit_names(value: int, bits) -> str:
    return " ".join(name for bit, name in bits if value >> bit & 1)


def guest_view(engine):
    """The engine's GuestView: shadow state under a VMM, the real CPU on bare hardware."""
    return engine.guest_view()


def snapshot(debuggee) -> dict[str, int]:
    """The guest's registers plus its descriptor-table registers, flattened to ints."""
    view = guest_view(debuggee.engine)
    return {**debuggee.registers(), **tables(view.gdtr(), view.idtr(), view.ldtr()[0],
                                              view.tss()[0])}


def real_snapshot(debuggee) -> dict[str, int]:
    cpu = debuggee.cpu
    return {**debuggee.real_registers(),
            **tables((cpu.gdtr.base, cpu.gdtr.limit), (cpu.idtr.base, cpu.idtr.limit),
                     cpu.ldtr.base, cpu.tr.selector)}


def tables(gdtr: tuple[int, int], idtr: tuple[int, int], ldt_base: int, tr: int) -> dict:
    return {"gdtr.base": gdtr[0], "gdtr.limit": gdtr[1], "idtr.base": idtr[0],
            "idtr.limit": idtr[1], "ldtr.base": ldt_base, "tr": tr}


# ----- registers --------------------------------------------------------------------------------
def mode_name(regs: dict, vm86: bool = False) -> str:
    if vm86:
        return "virtual-8086 mode"
    if not regs["cr0"] & 1:
        return "real mode"
    return "protected mode" + (", paging" if regs["cr0"] >> 31 else "")


def show_register(name: str, value: int) -> str:
    if name in SEG_NAMES or name in ("tr", "gdtr.limit", "idtr.limit"):
        return f"{value:#06x}"
    if name == "cpl":
        return str(value)
    if name == "eflags":
        return " ".join(filter(None, (f"{value:#010x}", bit_names(value, EFLAGS_BITS),
                                      f"IOPL={value >> 12 & 3}")))
    bits = {"cr0": CR0_BITS, "cr4": CR4_BITS}.get(name, ())
    return f"{value:#010x} {bit_names(value, bits)}".rstrip()


def registers_report(debuggee) -> str:
    """`info registers`: guest view | real CPU, with '<- differs' where they disagree."""
    guest, real = snapshot(debuggee), real_snapshot(debuggee)
    order = [*GPR_NAMES, "eip", "eflags", *SEG_NAMES, "cpl", "cr0", "cr2", "cr3", "cr4",
             "gdtr.base", "gdtr.limit", "idtr.base", "idtr.limit", "ldtr.base", "tr"]
    lines = [f"{'':<11} {'guest view':<32} real CPU ({debuggee.engine.name} engine)",
             f"{'mode':<11} {mode_name(guest):<32} {mode_name(real, debuggee.cpu.vm86)}"]
    for name in order:
        mine, theirs = show_register(name, guest[name]), show_register(name, real[name])
        mark = "  <- differs" if guest[name] != real[name] else ""
        lines.append(f"{name:<11} {mine:<32} {theirs}{mark}")
    return "\n".join(lines)


# ----- memory -----------------------------------------------------------------------------------
def hexdump(data: bytes, address: int, unit: int) -> str:
    """gdb's x/Nx{b,h,w,g}: 16 bytes per line, little-endian units."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset:offset + 16]
        words = struct.unpack(f"<{len(chunk) // unit}{UNIT_FORMATS[unit]}", chunk)
        lines.append(f"{address + offset:#010x}:  "
                     + " ".join(f"{w:#0{2 + 2 * unit}x}" for w in words))
    return "\n".join(lines)


def readable(read, address: int, length: int) -> bytes:
    """As many bytes as can be read from ``address`` (stops at the first unmapped page)."""
    data = b""
    while len(data) < length:
        chunk = min(length - len(data), 0x1000 - ((address + len(data)) & 0xFFF))
        try:
            data += read(address + len(data), chunk)
        except (Fault, BusError):
            break
    return data


def instruction_text(insn, symbols: SymbolTable, base: int = 0) -> str:
    """The instruction as capstone spells it, a near branch's target followed by its symbol as
    gdb shows it (`jmp 0x7c32 <start.next>`); ``base`` turns the target into a linear address
    (the CS base when the instruction was decoded at its EIP)."""
    operands = insn.operands
    if (insn.mnemonic.startswith(NEAR_BRANCHES) and len(operands) == 1
            and operands[0].kind == "imm"):
        return f"{insn}{symbols.tag((base + operands[0].imm) & 0xFFFFFFFF)}"
    return str(insn)


def location(debuggee, symbols: SymbolTable = NO_SYMBOLS) -> str:
    """'0000:00007c00 <start>  fa  cli': where the guest is stopped, CS as the guest sees it."""
    cpu = debuggee.cpu
    linear = cpu.linear_pc()
    code = readable(debuggee.read_virtual, linear, 15)
    insn = debuggee.engine.disasm.decode(code, cpu.eip, cpu.code_bits) if code else None
    where = f"{debuggee.registers()['cs']:04x}:{cpu.eip:08x}{symbols.tag(linear)}"
    if insn is None:
        return f"{where}  {code[:8].hex(' ') or '<unmapped>'}  (does not decode)"
    return f"{where}  {insn.raw.hex(' ')}  {instruction_text(insn, symbols, linear - cpu.eip)}"


def disassembly(debuggee, address: int, count: int, bits: int, current: int | None = None,
                symbols: SymbolTable = NO_SYMBOLS) -> str:
    """gdb's x/Ni: one instruction a line, each address followed by its symbol (padded to a
    common width), => at ``current``."""
    code = readable(debuggee.read_virtual, address, 15 * count)
    if not code:
        return f"{address:#010x}{symbols.tag(address)}  <unmapped>"
    insns = debuggee.engine.disasm.disassemble(code, address, bits, count)
    tags = [symbols.tag(insn.address) for insn in insns]
    width = max(map(len, tags), default=0)
    lines = [f"{'=> ' if insn.address == current else '   '}{insn.address:#010x}{tag:<{width}}  "
             f"{insn.raw.hex(' '):<24} {instruction_text(insn, symbols)}"
             for insn, tag in zip(insns, tags)]
    if len(insns) < count:
        end = insns[-1].address + insns[-1].size if insns else address
        lines.append(f"   {end:#010x}  {code[end - address:end - address + 8].hex(' ') or '--'}"
                     "  (does not decode, or memory ends)")
    return "\n".join(lines)


# ----- descriptor tables ------------------------------------------------------------------------
def descriptor_text(desc: Descriptor) -> str:
    if not desc.present:
        return "not present"
    if desc.system:
        kind = SYSTEM_TYPES.get(desc.type, f"reserved system type {desc.type:#x}")
    elif desc.is_code:
        kind = "code " + ("conforming " if desc.conforming else "") + (
            "r-x" if desc.type & 2 else "--x")
    else:
        kind = "data " + ("rw-" if desc.type & 2 else "r--") + (
            " expand-down" if desc.type & 4 else "")
    size = "" if desc.system else (", 32-bit" if desc.big else ", 16-bit")
    return f"base {desc.base:#010x} limit {desc.limit:#010x} {kind}, DPL {desc.dpl}{size}"


def gdt_report(debuggee) -> str:
    """The guest's GDT; all-zero entries after the null descriptor are counted, not listed."""
    base, limit = guest_view(debuggee.engine).gdtr()
    count = (limit + 1) // 8
    lines = [f"GDTR base {base:#010x} limit {limit:#06x} ({count} entries)"]
    if (base, limit) == RESET_GDTR:
        return lines[0] + ": the reset value, no GDT loaded yet"
    if not snapshot(debuggee)["cr0"] & 1:
        lines.append("(the guest is in real mode: segments are selector * 16, the GDT is unused)")
    data = readable(debuggee.read_virtual, base, count * 8)
    entries = struct.unpack(f"<{len(data) // 8}Q", data[:len(data) // 8 * 8])
    lines += [f"  {8 * index:#06x}  {raw:016x}  "
              + ("null descriptor" if index == 0 else descriptor_text(Descriptor.decode(raw)))
              for index, raw in enumerate(entries) if raw or index == 0]
    if len(entries) < count:
        lines.append(f"  (unreadable from {base + 8 * len(entries):#x}: not mapped)")
    empty = entries[1:].count(0)
    if empty:
        lines.append(f"  ({empty} empty entries not shown)")
    return "\n".join(lines)


def gate_text(raw: int) -> str:
    lo, hi = raw & 0xFFFFFFFF, raw >> 32
    offset, selector = (lo & 0xFFFF) | (hi & 0xFFFF0000), lo >> 16
    kind, dpl, present = (hi >> 8) & 0x1F, (hi >> 13) & 3, hi >> 15 & 1
    name = SYSTEM_TYPES.get(kind & 0xF, f"type {kind:#x}") if not kind & 0x10 else "not a gate"
    state = "" if present else ", not present"
    return f"{selector:04x}:{offset:08x}  {name}, DPL {dpl}{state}"


def idt_report(debuggee) -> str:
    """The guest's IDT (protected mode) or IVT (real mode); runs of identical entries are
    folded into one line, empty entries are skipped."""
    base, limit = guest_view(debuggee.engine).idtr()
    real_mode = not snapshot(debuggee)["cr0"] & 1
    size = 4 if real_mode else 8
    lines = [f"{'IVT' if real_mode else 'IDT'}: IDTR base {base:#010x} limit {limit:#06x} "
             f"({(limit + 1) // size} vectors)"]
    data = readable(debuggee.read_virtual, base, min(limit + 1, 256 * size))
    entries = [int.from_bytes(data[i:i + size], "little") for i in range(0, len(data), size)]
    for first, last, raw in runs(entries):
        text = f"{raw >> 16:04x}:{raw & 0xFFFF:04x}" if real_mode else gate_text(raw)
        vectors = f"{first:#04x}" if first == last else f"{first:#04x}-{last:#04x}"
        lines.append(f"  {vectors:<11} {text}")
    empty = entries.count(0)
    if empty:
        lines.append(f"  ({empty} empty vectors not shown)")
    return "\n".join(lines)


def runs(entries: list[int]):
    """(first, last, value) for each run of equal non-zero entries."""
    first = 0
    for index, value in enumerate(entries):
        if index + 1 == len(entries) or entries[index + 1] != value:
            if value:
                yield first, index, value
            first = index + 1


# ----- paging -----------------------------------------------------------------------------------
def page_entry(debuggee, level: str, index: int, table: int) -> tuple[int, str]:
    address = table + 4 * index
    entry = struct.unpack("<I", debuggee.read_physical(address, 4))[0]
    return entry, (f"{level}[{index}] at {address:#010x} = {entry:#010x}  "
                   f"{bit_names(entry, PAGE_BITS) or 'not present'}")


def page_walk_report(debuggee, linear: int) -> str:
    """`info pages ADDR`: the 32-bit paging walk (PDE, PTE or 4 MiB page, flags, physical)."""
    regs = snapshot(debuggee)
    linear &= 0xFFFFFFFF
    if not regs["cr0"] >> 31:
        return f"paging is off (CR0.PG = 0): linear {linear:#010x} = physical {linear:#010x}"
    if regs["cr4"] & (1 << 5):
        return "PAE paging (CR4.PAE = 1) is not modelled"
    directory = regs["cr3"] & 0xFFFFF000
    return "\n".join([f"linear {linear:#010x}: directory index {linear >> 22}, table index "
                      f"{linear >> 12 & 0x3FF}, offset {linear & 0xFFF:#05x}",
                      f"CR3 {regs['cr3']:#010x}: page directory at {directory:#010x}",
                      *walk(debuggee, linear, directory, regs["cr4"])])


def walk(debuggee, linear: int, directory: int, cr4: int) -> list[str]:
    pde, pde_text = page_entry(debuggee, "PDE", linear >> 22, directory)
    if not pde & 1:
        return [pde_text, "not mapped: an access raises #PF"]
    if pde & 0x80 and cr4 & (1 << 4):
        return [pde_text, f"4 MiB page: physical {(pde & 0xFFC00000) | (linear & 0x3FFFFF):#010x}"]
    pte, pte_text = page_entry(debuggee, "PTE", linear >> 12 & 0x3FF, pde & 0xFFFFF000)
    if not pte & 1:
        return [pde_text, pte_text, "not mapped: an access raises #PF"]
    rights = ("user" if pde & pte & 4 else "supervisor") + (
        ", writable" if pde & pte & 2 else ", read-only")
    physical = (pte & 0xFFFFF000) | (linear & 0xFFF)
    return [pde_text, pte_text, f"4 KiB page ({rights}): physical {physical:#010x}"]


# ----- VMCS -------------------------------------------------------------------------------------
def field_text(value) -> str:
    if dataclasses.is_dataclass(value):
        return " ".join(f"{f.name}={field_text(getattr(value, f.name))}"
                        for f in dataclasses.fields(value))
    if isinstance(value, (bool, enum.Enum)) or not isinstance(value, int):
        return str(getattr(value, "name", value))
    return f"{value:#x}"


def vmcs_report(debuggee, exit) -> str:
    """`info vmcs`: the guest-state area, the last exit's information fields, the controls."""
    vmcs = getattr(debuggee.engine, "vmcs", None)
    if vmcs is None:
        return (f"the {debuggee.engine.name} engine has no VMCS: the guest runs on the bare "
                "machine and nothing is shadowed (see info registers)")
    guest = debuggee.engine.guest_state()
    lines = ["guest-state area:"]
    lines += [f"  {f.name:<16} {field_text(getattr(guest, f.name))}"
              for f in dataclasses.fields(guest)]
    lines.append("VM-exit information (the last exit):")
    lines += exit_fields(exit)
    return "\n".join(lines + controls(debuggee.engine))


def exit_fields(exit) -> list[str]:
    if exit is None:
        return ["  no exit yet"]
    return [f"  exit reason      {exit.reason.name} ({int(exit.reason)})",
            f"  qualification    {exit.qualification:#x}",
            f"  instruction len  {exit.insn_len}",
            f"  guest RIP        {exit.rip:#010x}"]


def controls(engine) -> list[str]:
    """The VM-execution controls, for an engine that has them (vtx's VmxControls)."""
    fields = getattr(engine, "controls", None)
    if fields is None:
        return [f"VM-execution controls: none (the {engine.name} engine intercepts by "
                "deprivileging: every privileged instruction and all I/O exit)"]
    return ["VM-execution controls:"] + [f"  {f.name:<24} {field_text(getattr(fields, f.name))}"
                                         for f in dataclasses.fields(fields)]


# ----- devices ----------------------------------------------------------------------------------
def uart_text(uart: Uart16550, now: int) -> list[str]:
    baud = f"{uart.baud} baud" if uart.baud else "divisor 0 (no baud rate)"
    iir = uart.interrupt_id() | (0xC0 if uart.fifo_enabled else 0)
    return [f"IER {uart.ier:#04x}  IIR {iir:#04x}"
            f"  FCR {uart.fcr:#04x}  LCR {uart.lcr:#04x}  MCR {uart.mcr:#04x}  SCR {uart.scr:#04x}",
            f"DLL {uart.divisor & 0xFF:#04x}  DLM {uart.divisor >> 8:#04x}  ({baud}), "
            f"FIFOs {'on' if uart.fifo_enabled else 'off'}"]


def pic_text(pic: Pic8259, now: int) -> list[str]:
    state = "initialized" if pic.initialized else "not initialized"
    return [f"IRR {pic.irr:#04x}  ISR {pic.isr:#04x}  IMR {pic.imr:#04x}  vector base "
            f"{pic.vector_base:#04x}  ({state}, {'level' if pic.level_triggered else 'edge'}"
            f"-triggered{', AEOI' if pic.auto_eoi else ''})"]


def pit_text(pit: Pit8254, now: int) -> list[str]:
    lines = []
    for index, counter in enumerate(pit.counters):
        if counter.start_ns is None:
            lines.append(f"counter {index}: mode {counter.mode}, not counting")
            continue
        lines.append(f"counter {index}: mode {counter.mode}, initial count {counter.initial}, "
                     f"count {counter.count(now)}, OUT {int(counter.out(now))}")
    return lines


def null_text(device: NullDevice, now: int) -> list[str]:
    return [f"{device.reads} reads, {device.writes} writes"]


DEVICE_TEXT = {Uart16550: uart_text, Pic8259: pic_text, Pit8254: pit_text, NullDevice: null_text}


def devices_report(vm) -> str:
    """`info devices`: every port window on the bus and its device's registers."""
    now = vm.clock.now_ns()
    lines = []
    for base, length, device in vm.pio.entries():
        lines.append(f"{base:#06x}-{base + length - 1:#06x}  {device.name}")
        describe = DEVICE_TEXT.get(type(device))
        lines += [f"    {text}" for text in (describe(device, now) if describe else [])]
    return "\n".join(lines)


__all__ = ["registers_report", "hexdump", "readable", "location", "disassembly", "gdt_report",
           "idt_report", "page_walk_report", "vmcs_report", "devices_report", "snapshot"]

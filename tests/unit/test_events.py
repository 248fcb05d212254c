"""Architectural event delivery (emu/events.py) on the machine's CPU, without running guest code:
frames, privilege switch through the TSS, error codes, #DF escalation and triple fault."""
from __future__ import annotations

import struct

import pytest

from emu.cpu import CS, DS, ES, SS, ESP, FLAG_IF, Cpu, DESC_B, DESC_DPL_SHIFT, DESC_P, DESC_S
from emu.events import (DF, GP, PF, EventDelivery, EventKind, GuestView, TripleFault,
                        is_double_fault)
from emu.memory import GuestMemory
from emu.paging import LinearMemory

GDT, IDT, TSS, KSTACK, USTACK = 0x1000, 0x2000, 0x3000, 0x9000, 0x7000
K_CS, K_DS, U_CS, U_DS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28


def descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    return struct.pack("<Q", (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
                       | (((limit >> 16) & 0xF) << 48) | (flags << 52) | ((base >> 24) << 56))


def gate(offset: int, selector: int, attributes: int) -> bytes:
    return struct.pack("<HHBBH", offset & 0xFFFF, selector, 0, attributes, offset >> 16)


@pytest.fixture
def machine():
    memory = GuestMemory(1 << 20)
    cpu = Cpu(memory)
    gdt = (b"\0" * 8 + descriptor(0, 0xFFFFF, 0x9A) + descriptor(0, 0xFFFFF, 0x92)
           + descriptor(0, 0xFFFFF, 0xFA) + descriptor(0, 0xFFFFF, 0xF2)
           + descriptor(TSS, 0x67, 0x89, 0))
    memory.write(GDT, gdt)
    memory.write(TSS + 4, struct.pack("<II", KSTACK, K_DS))
    cpu.write_cr(0, 0x11)
    cpu.set_table("gdtr", GDT, len(gdt) - 1)
    cpu.tr.selector, cpu.tr.base, cpu.tr.limit, cpu.tr.flags = TSS_SEL, TSS, 0x67, 0xB << 8
    yield memory, cpu, EventDelivery(cpu, LinearMemory(memory, cpu.cr), GuestView(cpu))
    cpu.close()


def enter_ring3(cpu: Cpu, eip: int = 0x4000) -> None:
    data3 = DESC_P | DESC_S | DESC_B | (3 << DESC_DPL_SHIFT) | (0x3 << 8) | (1 << 23)
    code3 = DESC_P | DESC_S | DESC_B | (3 << DESC_DPL_SHIFT) | (0xB << 8) | (1 << 23)
    for seg in (DS, ES, SS):
        cpu.load_segment(seg, U_DS, 0, 0xFFFFFFFF, data3)
    cpu.load_segment(CS, U_CS, 0, 0xFFFFFFFF, code3)
    cpu.gpr[ESP] = USTACK
    cpu.eip = eip
    cpu.eflags = 0x202


def set_idt(memory, cpu, gates: dict[int, bytes], limit: int = 0x7FF) -> None:
    for vector, entry in gates.items():
        memory.write(IDT + 8 * vector, entry)
    cpu.set_table("idtr", IDT, limit)


def frame(memory, esp: int, words: int) -> list[int]:
    return list(struct.unpack(f"<{words}I", memory.read(esp, 4 * words)))


def test_double_fault_classes_follow_sdm_table_6_5():
    assert is_double_fault(GP, GP) and is_double_fault(PF, PF) and is_double_fault(PF, GP)
    assert not is_double_fault(GP, PF)          # contributory then #PF: handled serially
    assert not is_double_fault(3, GP)           # benign first event
    assert not is_double_fault(0x20, GP)


def test_int_from_ring3_switches_to_the_tss_stack(machine):
    memory, cpu, events = machine
    set_idt(memory, cpu, {0x80: gate(0x5000, K_CS, 0xEE)})  # interrupt gate, DPL 3
    enter_ring3(cpu)
    events.deliver(0x80, EventKind.SOFTWARE_INTERRUPT)
    assert (cpu.cpl, cpu.segs[CS].selector, cpu.segs[SS].selector) == (0, K_CS, K_DS)
    assert cpu.eip == 0x5000 and cpu.gpr[ESP] == KSTACK - 20
    assert frame(memory, KSTACK - 20, 5) == [0x4000, U_CS, 0x202, USTACK, U_DS]
    assert not cpu.system_flags & FLAG_IF       # an interrupt gate clears IF
    assert cpu.segs[DS].selector == U_DS        # data segments are left to the handler


def test_gp_pushes_its_error_code_below_the_frame(machine):
    memory, cpu, events = machine
    set_idt(memory, cpu, {GP: gate(0x5100, K_CS, 0x8F)})    # trap gate keeps IF
    enter_ring3(cpu)
    events.deliver(GP, EventKind.HARDWARE_EXCEPTION, 0x10)
    assert frame(memory, cpu.gpr[ESP], 6) == [0x10, 0x4000, U_CS, 0x202, USTACK, U_DS]
    assert cpu.system_flags & FLAG_IF


def test_int_through_a_dpl0_gate_from_ring3_raises_gp(machine):
    memory, cpu, events = machine
    set_idt(memory, cpu, {0x30: gate(0x5000, K_CS, 0x8E), GP: gate(0x5100, K_CS, 0x8E)})
    enter_ring3(cpu)
    events.deliver(0x30, EventKind.SOFTWARE_INTERRUPT)
    assert cpu.eip == 0x5100
    assert frame(memory, cpu.gpr[ESP], 1) == [(0x30 << 3) | 2]   # IDT, not external


def test_missing_gates_escalate_to_double_then_triple_fault(machine):
    memory, cpu, events = machine
    set_idt(memory, cpu, {DF: gate(0x5200, K_CS, 0x8E)}, limit=8 * DF + 7)
    enter_ring3(cpu)
    events.deliver(0x40, EventKind.EXTERNAL)    # beyond the limit: #GP, whose gate is also missing
    assert cpu.eip == 0x5200
    assert frame(memory, cpu.gpr[ESP], 1) == [0]
    set_idt(memory, cpu, {}, limit=0)
    with pytest.raises(TripleFault, match=r"#GP -> #DF"):
        events.deliver(GP, EventKind.HARDWARE_EXCEPTION, 0)


def test_real_mode_interrupt_goes_through_the_ivt(machine):
    memory, cpu, events = machine
    cpu.write_cr(0, 0x10)
    cpu.set_table("idtr", 0, 0x3FF)
    for seg in (CS, SS, DS):
        cpu.load_real_segment(seg, 0x100)
    cpu.gpr[ESP], cpu.eip, cpu.eflags = 0x800, 0x1234, 0x202
    memory.write(4 * 0x21, struct.pack("<HH", 0x0010, 0x2000))
    events.deliver(0x21, EventKind.SOFTWARE_INTERRUPT)
    assert (cpu.segs[CS].selector, cpu.segs[CS].base, cpu.eip) == (0x2000, 0x20000, 0x10)
    assert struct.unpack("<3H", memory.read(0x1000 + 0x800 - 6, 6)) == (0x1234, 0x100, 0x202)
    assert not cpu.system_flags & FLAG_IF

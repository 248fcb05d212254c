"""Cached delivery plans (emu/event_plans.py): a plan is used only while guest memory and the
registers still hold what it was derived from, and delivers exactly what the full path does."""
from __future__ import annotations

import struct

import pytest

from emu.cpu import CS, DESC_B, DESC_DPL_SHIFT, DESC_P, DESC_S, ESP, FLAG_IF, SS, Cpu
from emu.events import GP, PF, EventDelivery, EventKind, GuestView, TripleFault
from emu.memory import GuestMemory
from emu.paging import PG_A, PG_D, LinearMemory

GDT, IDT, TSS, KSTACK, USTACK = 0x1000, 0x2000, 0x3000, 0x9000, 0x7000
PAGE_DIR_A, PAGE_DIR_B, TABLE_A, TABLE_B = 0x10000, 0x11000, 0x12000, 0x13000
IDT_COPY = 0x14000          # another frame that the IDT's linear page can map to
K_CS, K_DS, U_CS, U_DS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28
SOFT, HARD = EventKind.SOFTWARE_INTERRUPT, EventKind.HARDWARE_EXCEPTION


def descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    return struct.pack("<Q", (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
                       | (((limit >> 16) & 0xF) << 48) | (flags << 52) | ((base >> 24) << 56))


def gate(offset: int, selector: int, attributes: int) -> bytes:
    return struct.pack("<HHBBH", offset & 0xFFFF, selector, 0, attributes, offset >> 16)


GDT_BYTES = (b"\0" * 8 + descriptor(0, 0xFFFFF, 0x9A) + descriptor(0, 0xFFFFF, 0x92)
             + descriptor(0, 0xFFFFF, 0xFA) + descriptor(0, 0xFFFFF, 0xF2)
             + descriptor(TSS, 0x67, 0x89, 0))


def new_machine() -> tuple[GuestMemory, Cpu, EventDelivery]:
    """Flat protected mode: the GDT above, a 32-bit TSS with SS0:ESP0 = K_DS:KSTACK, an IDT."""
    memory = GuestMemory(1 << 20)
    cpu = Cpu(memory)
    memory.write(GDT, GDT_BYTES)
    memory.write(TSS + 4, struct.pack("<II", KSTACK, K_DS))
    cpu.write_cr(0, 0x11)
    cpu.set_table("gdtr", GDT, len(GDT_BYTES) - 1)
    cpu.set_table("idtr", IDT, 0x7FF)
    cpu.tr.selector, cpu.tr.base, cpu.tr.limit, cpu.tr.flags = TSS_SEL, TSS, 0x67, 0xB << 8
    return memory, cpu, EventDelivery(cpu, LinearMemory(memory, cpu.cr), GuestView(cpu))


@pytest.fixture
def machine():
    memory, cpu, events = new_machine()
    yield memory, cpu, events
    cpu.close()
    memory.close()


def flat(kind: int, dpl: int) -> int:
    return DESC_P | DESC_S | DESC_B | (dpl << DESC_DPL_SHIFT) | (kind << 8) | (1 << 23)


def enter(cpu: Cpu, ring: int, esp: int = USTACK, eip: int = 0x4000, code32: bool = True) -> None:
    cs, ds = (U_CS, U_DS) if ring == 3 else (K_CS, K_DS)
    cpu.load_segment(SS, ds, 0, 0xFFFFFFFF, flat(0x3, ring))
    cpu.load_segment(CS, cs, 0, 0xFFFFFFFF, flat(0xB, ring) & ~(0 if code32 else DESC_B))
    cpu.gpr[ESP] = esp
    cpu.eip = eip
    cpu.eflags = 0x202


def set_gate(memory, vector: int, offset: int, attributes: int = 0x8E, base: int = IDT) -> None:
    memory.write(base + 8 * vector, gate(offset, K_CS, attributes))


def paging(memory, cpu) -> None:
    """Two address spaces over the first 4 MiB: identical but for the IDT's page, which B maps
    to IDT_COPY. Every entry starts accessed and dirty, as after earlier use."""
    for directory, table in ((PAGE_DIR_A, TABLE_A), (PAGE_DIR_B, TABLE_B)):
        memory.write(directory, struct.pack("<I", table | 0x67))
        memory.write(table, b"".join(struct.pack("<I", (i << 12) | 0x67) for i in range(1024)))
    memory.write(TABLE_B + (IDT >> 12) * 4, struct.pack("<I", IDT_COPY | 0x67))
    cpu.write_cr(3, PAGE_DIR_A)
    cpu.write_cr(0, 0x80000011)


def test_a_repeated_delivery_uses_the_plan(machine):
    memory, cpu, events = machine
    set_gate(memory, 0, 0x5000)
    for _ in range(3):
        enter(cpu, 0, KSTACK)
        events.deliver(0, HARD)
        assert cpu.eip == 0x5000
    assert (events.plans.builds, events.plans.hits) == (1, 2)


def test_a_rewritten_gate_is_seen_by_the_next_delivery(machine):
    memory, cpu, events = machine
    set_gate(memory, 0, 0x5000)
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    set_gate(memory, 0, 0x6000, 0x8F)           # new handler, and a trap gate
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert cpu.eip == 0x6000 and cpu.system_flags & FLAG_IF


def test_a_gate_made_not_present_raises_np_as_on_the_full_path(machine):
    memory, cpu, events = machine
    set_gate(memory, 0x20, 0x5000)
    set_gate(memory, 11, 0x7000)
    enter(cpu, 0, KSTACK)
    events.deliver(0x20, EventKind.EXTERNAL)
    memory.write(IDT + 8 * 0x20 + 5, b"\x0e")   # not present any more
    enter(cpu, 0, KSTACK)
    events.deliver(0x20, EventKind.EXTERNAL)
    assert cpu.eip == 0x7000
    assert struct.unpack_from("<I", memory.mmap, cpu.gpr[ESP])[0] == (0x20 << 3) | 2 | 1


def test_a_rewritten_descriptor_is_seen_by_the_next_delivery(machine):
    memory, cpu, events = machine
    set_gate(memory, 0, 0x5000)
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert cpu.segs[CS].base == 0
    memory.write(GDT + K_CS, descriptor(0x100000, 0xFFFF, 0x9A))
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert cpu.segs[CS].base == 0x100000


def test_a_rewritten_tss_esp0_is_seen_by_the_next_delivery(machine):
    memory, cpu, events = machine
    set_gate(memory, 0x80, 0x5000, 0xEE)
    enter(cpu, 3)
    events.deliver(0x80, SOFT)
    assert cpu.gpr[ESP] == KSTACK - 20
    memory.write(TSS + 4, struct.pack("<I", 0xA000))
    enter(cpu, 3)
    events.deliver(0x80, SOFT)
    assert cpu.gpr[ESP] == 0xA000 - 20
    assert struct.unpack_from("<5I", memory.mmap, 0xA000 - 20) == (0x4000, U_CS, 0x202, USTACK,
                                                                     U_DS)


def test_a_cr3_switch_and_a_rewritten_pte_are_seen_by_the_next_delivery(machine):
    memory, cpu, events = machine
    paging(memory, cpu)
    set_gate(memory, 0, 0x5000)
    set_gate(memory, 0, 0x6000, base=IDT_COPY)
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert cpu.eip == 0x5000
    cpu.write_cr(3, PAGE_DIR_B)                 # the IDT's linear page now maps to IDT_COPY
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert cpu.eip == 0x6000
    cpu.write_cr(3, PAGE_DIR_A)
    memory.write(TABLE_A + (IDT >> 12) * 4, struct.pack("<I", IDT_COPY | 0x67))
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert cpu.eip == 0x6000


def test_accessed_and_dirty_bits_cleared_by_the_guest_are_set_again(machine):
    memory, cpu, events = machine
    paging(memory, cpu)
    set_gate(memory, 0, 0x5000)
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    idt_pte, stack_pte = TABLE_A + (IDT >> 12) * 4, TABLE_A + ((KSTACK - 12) >> 12) * 4
    for pte in (idt_pte, stack_pte):
        entry = struct.unpack_from("<I", memory.mmap, pte)[0]
        memory.write(pte, struct.pack("<I", entry & ~(PG_A | PG_D)))
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert cpu.eip == 0x5000
    assert struct.unpack_from("<I", memory.mmap, idt_pte)[0] & PG_A
    assert struct.unpack_from("<I", memory.mmap, stack_pte)[0] & (PG_A | PG_D) == PG_A | PG_D
    memory.write(stack_pte, struct.pack("<I", (KSTACK - 0x1000) | PG_A | 0x7))   # clean, accessed
    enter(cpu, 0, KSTACK)
    events.deliver(0, HARD)
    assert struct.unpack_from("<I", memory.mmap, stack_pte)[0] & PG_D


def test_a_read_only_stack_page_faults_under_cr0_wp(machine):
    memory, cpu, events = machine
    paging(memory, cpu)
    set_gate(memory, 0x20, 0x5000)
    enter(cpu, 0, KSTACK)
    events.deliver(0x20, EventKind.EXTERNAL)
    memory.write(TABLE_A + (0x7000 >> 12) * 4, struct.pack("<I", 0x7000 | PG_A | PG_D | 0x5))
    enter(cpu, 0, 0x8000)
    events.deliver(0x20, EventKind.EXTERNAL)        # CR0.WP clear: ring 0 writes anyway
    assert cpu.eip == 0x5000 and cpu.gpr[ESP] == 0x8000 - 12
    cpu.write_cr(0, 0x80010011)
    enter(cpu, 0, KSTACK)
    events.deliver(0x20, EventKind.EXTERNAL)
    enter(cpu, 0, 0x8000)
    with pytest.raises(TripleFault, match=r"^triple fault \(vector 32 -> #PF"):
        events.deliver(0x20, EventKind.EXTERNAL)    # CR0.WP set: #PF; no #PF handler: shutdown
    assert cpu.cr[2] == 0x8000 - 4                   # the first push (EFLAGS) faults


def test_a_stack_page_unmapped_since_ends_as_on_the_full_path():
    """The plan's frame page is gone: the full path's #PF, then (its handler pushes on the same
    stack) #DF and shutdown, with the same CR2."""
    outcomes = []
    for planned in (True, False):
        memory, cpu, events = new_machine()
        if not planned:
            events.plans.deliver = lambda *args: False
        paging(memory, cpu)
        set_gate(memory, 0, 0x5000)
        enter(cpu, 0, 0x8000)
        events.deliver(0, HARD)
        memory.write(TABLE_A + (0x7000 >> 12) * 4, struct.pack("<I", 0))
        enter(cpu, 0, 0x8000)
        with pytest.raises(TripleFault) as shutdown:
            events.deliver(0, HARD)
        outcomes.append((str(shutdown.value), cpu.cr[2]))
        cpu.close()
        memory.close()
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0].startswith("triple fault (#DE -> #PF") and outcomes[0][1] == 0x8000 - 4


def test_a_software_interrupt_through_a_dpl0_gate_still_raises_gp(machine):
    memory, cpu, events = machine
    set_gate(memory, 0x30, 0x5000)
    set_gate(memory, GP, 0x5100)
    enter(cpu, 0, KSTACK)
    events.deliver(0x30, SOFT)                  # from ring 0: fine, and planned
    enter(cpu, 3)
    events.deliver(0x30, SOFT)
    assert cpu.eip == 0x5100
    assert struct.unpack_from("<I", memory.mmap, cpu.gpr[ESP])[0] == (0x30 << 3) | 2


SCENARIOS = {
    "interrupt gate, ring 0": (0, KSTACK, 0, HARD, None, 0x8E),
    "trap gate, ring 0, #GP with error code": (0, KSTACK, GP, HARD, 0x1234, 0x8F),
    "16-bit interrupt gate, ring 0": (0, KSTACK, 0, HARD, None, 0x86),
    "INT 0x80 from ring 3": (3, USTACK, 0x80, SOFT, None, 0xEE),
    "#PF from ring 3 with error code": (3, USTACK, PF, HARD, 6, 0x8E),
    "external interrupt from ring 3, 16-bit trap gate": (3, USTACK, 0x20, EventKind.EXTERNAL,
                                                         None, 0xE7),
    "interrupt gate from 16-bit code at ring 0": (0, KSTACK, 0x21, EventKind.EXTERNAL, None,
                                                  0x8E, False),
}


def deliver_twice(machine, scenario, planned: bool) -> tuple:
    memory, cpu, events = machine
    ring, esp, vector, kind, error_code, attributes = scenario[:6]
    code32 = scenario[6] if len(scenario) > 6 else True
    if not planned:
        events.plans.deliver = lambda *args: False
    set_gate(memory, vector, 0x12345, attributes)
    for _ in range(2):
        enter(cpu, ring, esp, code32=code32)
        events.deliver(vector, kind, error_code)
    registers = (cpu.eip, cpu.gpr[ESP], cpu.eflags, cpu.cpl, cpu.stack_bits, cpu.code_bits,
                 *((s.selector, s.base, s.limit, s.flags) for s in cpu.segs))
    return registers, memory.read(0, 0x20000)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_plan_delivers_what_the_full_path_delivers(name):
    results = []
    for planned in (True, False):
        memory, cpu, events = new_machine()
        results.append(deliver_twice((memory, cpu, events), SCENARIOS[name], planned))
        assert cpu.code_bits == 32              # every handler runs in K_CS, a 32-bit segment
        assert events.plans.hits == (1 if planned else 0)
        cpu.close()
        memory.close()
    assert results[0] == results[1]

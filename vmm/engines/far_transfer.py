"""Protected-mode far transfers as the deprivileging engines emulate them: far JMP/CALL to a code
segment or through a call gate, and far RET/IRET, with the checks, fault vectors and error codes
of the reference CPU (QEMU's helper_ljmp_protected, helper_lcall_protected and
helper_ret_protected; Intel SDM Vol. 2, JMP, CALL, RET, IRET).

Nothing architectural changes until every check has passed: a far return reads its frame through
a cursor and ESP moves only when the transfer happens, so a faulting one can be restarted.
Task switches (a TSS or task gate named by JMP/CALL) and calls through a gate to a more privileged
ring are not modelled: they end the run with a report (``UnsupportedGuestState``).
"""
from __future__ import annotations

from typing import NamedTuple

from emu.cpu import DS, ES, ESP, FS, GS, SS
from emu.paging import Fault
from emu.segments import Descriptor
from vmm.engines.deprivilege import UnsupportedGuestState

GP, NP = 13, 11
TSS_16, LDT, CALL_GATE_16, TASK_GATE, TSS_32, CALL_GATE_32 = 0x1, 0x2, 0x4, 0x5, 0x9, 0xC


class Target(NamedTuple):
    """Where a far JMP/CALL lands: the code segment, the offset, and the size of the return
    address a CALL pushes (a call gate's own size, else the instruction's operand size)."""
    selector: int
    desc: Descriptor
    offset: int
    push_bits: int | None


def _gp(selector: int) -> Fault:
    return Fault(GP, selector & 0xFFFC)


def code_target(g, selector: int, offset: int, call: bool) -> Target:
    """The checks of a protected-mode far JMP (``call`` False) or CALL to ``selector:offset``."""
    if selector & 0xFFFC == 0:
        raise Fault(GP, 0)
    desc = g.descriptor(selector)
    cpl = g.guest_cpl()
    if not desc.system:
        if not desc.is_code:
            raise _gp(selector)
        if desc.conforming and desc.dpl > cpl:
            raise _gp(selector)
        if not desc.conforming and (selector & 3 > cpl or desc.dpl != cpl):
            raise _gp(selector)
        if not desc.present:
            raise Fault(NP, selector & 0xFFFC)
        if offset > desc.limit:
            raise _gp(selector)
        return Target(selector, desc, offset, None)
    dpl, rpl, kind = desc.dpl, selector & 3, desc.type
    if kind in (TSS_16, TSS_32, TASK_GATE):
        if dpl < cpl or dpl < rpl:
            raise _gp(selector)
        raise UnsupportedGuestState(f"far {'CALL' if call else 'JMP'} to {selector:#x} switches "
                                    "tasks (TSS or task gate): task switches are not modelled")
    if kind not in (CALL_GATE_16, CALL_GATE_32) or dpl < cpl or dpl < rpl:
        raise _gp(selector)
    if not desc.present:
        raise Fault(NP, selector & 0xFFFC)
    return _through_gate(g, desc, cpl, call)


def _through_gate(g, gate: Descriptor, cpl: int, call: bool) -> Target:
    raw = gate.raw
    selector = (raw >> 16) & 0xFFFF
    offset = raw & 0xFFFF
    if gate.type == CALL_GATE_32:
        offset |= (raw >> 32) & 0xFFFF0000
    if call and selector & 0xFFFC == 0:
        raise Fault(GP, 0)
    desc = g.descriptor(selector)
    if not desc.is_code:
        raise _gp(selector)
    if call:
        if desc.dpl > cpl:
            raise _gp(selector)
        if not desc.present:
            raise Fault(NP, selector & 0xFFFC)
        if not desc.conforming and desc.dpl < cpl:
            raise UnsupportedGuestState("a far CALL through a call gate to a more privileged "
                                        "ring is not modelled")
    else:
        if desc.conforming and desc.dpl > cpl or not desc.conforming and desc.dpl != cpl:
            raise _gp(selector)
        if not desc.present:
            raise _gp(selector)
        if offset > desc.limit:
            raise Fault(GP, 0)
    return Target(selector, desc, offset, 32 if gate.type == CALL_GATE_32 else 16)


class StackCursor:
    """Reads a frame off the guest's stack without moving ESP until ``commit``."""

    def __init__(self, g):
        cpu = g.cpu
        self.g = g
        self.mask = 0xFFFFFFFF if cpu.stack_bits == 32 else 0xFFFF
        self.base = cpu.segs[SS].base
        self.esp = cpu.gpr[ESP]
        self.user = g.guest_cpl() == 3

    def pop(self, size: int) -> int:
        raw = self.g.lin.read(self.base + (self.esp & self.mask), size, self.user)
        self.skip(size)
        return int.from_bytes(raw, "little")

    def skip(self, count: int) -> None:
        self.esp = (self.esp & ~self.mask) | ((self.esp + count) & self.mask)

    def commit(self) -> None:
        self.g.cpu.gpr[ESP] = self.esp


def return_target(g, selector: int) -> Descriptor:
    """The code-segment checks of a far RET/IRET to ``selector`` (its RPL is the new CPL)."""
    if selector & 0xFFFC == 0:
        raise Fault(GP, 0)
    desc = g.descriptor(selector)
    if desc.system or not desc.is_code:
        raise _gp(selector)
    rpl = selector & 3
    if rpl < g.guest_cpl():
        raise _gp(selector)
    if desc.conforming and desc.dpl > rpl or not desc.conforming and desc.dpl != rpl:
        raise _gp(selector)
    if not desc.present:
        raise Fault(NP, selector & 0xFFFC)
    return desc


def far_return(g, frame: StackCursor, selector: int, offset: int, size: int,
               release: int = 0) -> None:
    """Complete a far RET/IRET whose CS:EIP (and EFLAGS) ``frame`` has read (``size``-byte
    slots): to the same ring, or outward, popping SS:ESP and nulling the data segments the new
    ring may not use."""
    selector = g.view.returned_selector(selector)
    desc = return_target(g, selector)
    rpl = selector & 3
    frame.skip(release)
    if rpl == g.guest_cpl():
        g.view.load_code(selector, desc, rpl)
        frame.commit()
        g.cpu.eip = offset
        return
    new_esp, new_ss = frame.pop(size), frame.pop(size) & 0xFFFF
    ss_desc = _return_stack(g, new_ss, rpl)
    g.view.load_code(selector, desc, rpl)
    g.view.load_stack(new_ss, ss_desc)
    mask = 0xFFFFFFFF if ss_desc.big else 0xFFFF
    g.cpu.gpr[ESP] = (g.cpu.gpr[ESP] & ~mask) | ((new_esp + release) & mask)
    g.cpu.eip = offset
    for seg in (ES, DS, FS, GS):
        cache = g.cpu.segs[seg]
        if seg in (FS, GS) and cache.selector & 0xFFFC == 0:
            continue
        dpl = (cache.flags >> 13) & 3
        conforming_code = (cache.flags >> 8) & 0xC == 0xC
        if not conforming_code and dpl < rpl:
            g.cpu.load_segment(seg, 0, 0, 0, 0)


def _return_stack(g, selector: int, rpl: int) -> Descriptor:
    if selector & 0xFFFC == 0:
        raise Fault(GP, 0)
    if selector & 3 != rpl:
        raise _gp(selector)
    desc = g.descriptor(selector)
    if not desc.is_writable_data or desc.dpl != rpl:
        raise _gp(selector)
    if not desc.present:
        raise Fault(NP, selector & 0xFFFC)
    return desc

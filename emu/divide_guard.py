"""A guard around one instruction the emulated CPU would otherwise get wrong in the worst way:
32-bit IDIV with EDX:EAX = 0x80000000_00000000.

On hardware that dividend raises #DE for every 32-bit divisor (no quotient fits in 32 bits).
QEMU's helper_idivl_EAX (Unicorn 2.1.4, qemu/target/i386/int_helper.c) divides it as a C
int64_t before its overflow check, so a divisor of -1 computes INT64_MIN / -1 on the host: the
hypervisor process dies of SIGFPE, with every VM in it — eight guest instructions, in any mode,
under any engine. 16- and 8-bit IDIV divide in a wider type and are safe.

Every translated block is searched for IDIV r/m32 (F7 /7 with a 32-bit operand); each one found
gets a code hook bounded to its address (QEMU calls it only before that instruction). When the
dangerous dividend is there, the hook moves it to 0xC0000000_00000000 (or EAX from 0 to 1 when
EDX takes part in the memory operand's address), which every 32-bit divisor also overflows
without any host division overflowing: QEMU then reads the divisor (with its own faults) and
raises #DE itself, and the register is put back before anyone sees the exception. Where both EAX
and EDX form the operand's address, the operand is read one byte off; if that faults, the guest
sees that fault instead of #DE (documented, and no longer a crash).
"""
from __future__ import annotations

import ctypes
from typing import Callable

from unicorn import UC_PROT_EXEC
from unicorn.unicorn_py3.unicorn import uclib

from emu.disasm import Disassembler, Insn

DANGEROUS_EDX, DANGEROUS_EAX = 0x80000000, 0
EAX, EDX = 0, 2                                  # QEMU's regs[] indices
IDIV_OPCODE, IDIV_REG = 0xF7, 7


def idiv_r32_candidates(code: bytes) -> bool:
    """Cheap pre-filter: some F7 byte is followed by a ModRM byte whose reg field is 7."""
    at = code.find(IDIV_OPCODE)
    while 0 <= at < len(code) - 1:
        if (code[at + 1] >> 3) & 7 == IDIV_REG:
            return True
        at = code.find(IDIV_OPCODE, at + 1)
    return False


def is_idiv_r32(insn: Insn) -> bool:
    return insn.mnemonic == "idiv" and bool(insn.operands) and insn.operands[0].size == 4


def patch_for(insn: Insn) -> tuple[int, int]:
    """(register, value) to write instead of the dangerous dividend: one the operand's address
    does not use, so QEMU reads the same divisor."""
    mem = insn.operands[0].mem if insn.operands and insn.operands[0].kind == "mem" else None
    uses = {mem.base, mem.index} if mem is not None else set()
    if uses & {"edx", "dx"}:
        return EAX, 1          # (if EAX is in the address too, the operand moves by one byte)
    return EDX, 0xC0000000


class DivideGuard:
    """Finds IDIV r/m32 sites at translation time and disarms the host-crashing dividend.

    ``hooks`` is the CPU's emu.hooks.Hooks (bounded code hooks, block invalidation), ``gpr`` its
    view of the general registers, ``stop`` abandons the block being translated."""

    def __init__(self, uch, hooks, gpr, code_bits: Callable[[], int], stop: Callable[[], None]):
        self._uch = uch
        self._hooks = hooks
        self._gpr = gpr
        self._code_bits = code_bits
        self._stop = stop
        self._disasm = Disassembler()
        self._patches: dict[int, tuple[int, int]] = {}    # linear -> (register, value)
        self._hooked: set[int] = set()
        self._saved: tuple[int, int] | None = None         # (register, original) while patched
        self._buffer = ctypes.create_string_buffer(0x10000)

    def scan(self, linear: int, size: int) -> None:
        """Arm every IDIV r/m32 in [linear, linear+size) (sites whose bytes changed are
        dropped); a block that gains a hook is abandoned before it runs and translated again,
        now with the hook in it."""
        for address in [a for a in self._patches if linear <= a < linear + size]:
            del self._patches[address]
        code = self._read(linear, size)
        if code is None or not idiv_r32_candidates(code):
            return
        found = [insn for insn in self._disasm.disassemble(code, linear, self._code_bits())
                 if is_idiv_r32(insn)]
        for insn in found:
            self._patches[insn.address] = patch_for(insn)
        new = [insn.address for insn in found if insn.address not in self._hooked]
        for address in new:
            self._hooks.hook_code_at(address, self._at_site)
            self._hooked.add(address)
        if new:
            self._hooks.invalidate(linear, linear + size)
            self._stop()

    def _read(self, linear: int, size: int) -> bytes | None:
        if uclib.uc_vmem_read(self._uch, ctypes.c_uint64(linear), UC_PROT_EXEC, self._buffer,
                              ctypes.c_size_t(size)):
            return None
        return self._buffer.raw[:size]

    # ----- run time -------------------------------------------------------------------------
    def _at_site(self, linear: int) -> None:
        gpr = self._gpr
        if gpr[EDX] & 0xFFFFFFFF != DANGEROUS_EDX or gpr[EAX] & 0xFFFFFFFF != DANGEROUS_EAX:
            return
        patch = self._patches.get(linear)
        if patch is None:          # the code here is no longer an IDIV r/m32
            return
        register, value = patch
        self._saved = (register, gpr[register])
        gpr[register] = value

    def exception_taken(self) -> None:
        """The IDIV raised its #DE (or its operand faulted): put the dividend back."""
        if self._saved is not None:
            register, original = self._saved
            self._gpr[register] = original
            self._saved = None

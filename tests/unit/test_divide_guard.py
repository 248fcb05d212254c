"""The IDIV r/m32 guard's decoding side, without a CPU: the pre-filter, which instructions are
guarded, and which register takes the harmless dividend (one the operand's address does not use)."""
from __future__ import annotations

import pytest

from emu.disasm import Disassembler
from emu.divide_guard import EAX, EDX, idiv_r32_candidates, is_idiv_r32, patch_for

DISASM = Disassembler()


def insn(code: bytes, bits: int = 32):
    return DISASM.decode(code, 0x1000, bits)


@pytest.mark.parametrize("code,bits,guarded", [
    (b"\xf7\xf9", 32, True),              # idiv ecx
    (b"\x66\xf7\xf9", 16, True),          # idiv ecx in 16-bit code
    (b"\xf7\xf9", 16, False),             # idiv cx: divides in a wider type, safe
    (b"\xf6\xf9", 32, False),             # idiv cl
    (b"\xf7\xf1", 32, False),             # div ecx: unsigned, safe
    (b"\xf7\x3b", 32, True),              # idiv dword [ebx]
])
def test_which_instructions_are_guarded(code, bits, guarded):
    assert idiv_r32_candidates(code) == (code.find(b"\xf7") >= 0
                                         and (code[code.find(b"\xf7") + 1] >> 3) & 7 == 7)
    assert is_idiv_r32(insn(code, bits)) is guarded


def test_the_prefilter_skips_blocks_without_a_candidate():
    assert not idiv_r32_candidates(b"\x90\x90\xf7")          # F7 as the last byte
    assert not idiv_r32_candidates(b"\xf7\xd8\x90")          # neg eax (F7 /3)
    assert idiv_r32_candidates(b"\x90\xf7\xd8\xf7\x38")      # neg eax; idiv dword [eax]


@pytest.mark.parametrize("code,register", [
    (b"\xf7\xf9", EDX),                   # idiv ecx
    (b"\xf7\x38", EDX),                   # idiv dword [eax]: EAX is in the address
    (b"\xf7\x3a", EAX),                   # idiv dword [edx]: EDX is in the address
    (b"\xf7\x3c\x90", EAX),               # idiv dword [eax+edx*4]: both; EAX is moved by 1
])
def test_the_patched_register_is_not_in_the_address(code, register):
    assert patch_for(insn(code))[0] == register

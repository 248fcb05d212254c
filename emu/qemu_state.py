"""QEMU's live CPU state inside one Unicorn instance: CPUX86State, uc->emu_counter, CPUState.halted.

Unicorn's binding costs ~1.5 µs per register access, so this module finds the state once (marker
values written through the official API, searched for behind ``uc_struct``'s pointers), verifies
the layout through the API, and hands out ctypes views that read and write it directly.
"""
from __future__ import annotations

import ctypes
import os
import struct

from unicorn import Uc
from unicorn import x86_const as X

# CPUX86State offsets (x86_64 target, target_ulong = 8 bytes); verified by _verify_layout().
OFF_EIP, OFF_EFLAGS, OFF_HFLAGS, OFF_SEGS = 128, 136, 176, 184
OFF_LDT, OFF_TR, OFF_GDT, OFF_IDT, OFF_CR = 328, 352, 376, 400, 424
DR_RESET = struct.pack("<QQ", 0xFFFF0FF0, 0x400)  # DR6/DR7 reset values anchor the exception fields
R_ESI = 6  # env->regs[] slot of the register the probes write (QEMU's R_* numbering)

HALTED_WINDOW = 0x4000  # CPUState (with its halted flag) precedes CPUX86State inside X86CPU
NO_UNTIL = 1 << 48  # an "until" address no 32-bit guest can reach (ignored in exits mode)
PROBE_CODE = 0x1000  # guest-physical scratch address of the counter/halted probe program


class SegmentCache(ctypes.Structure):
    """QEMU's SegmentCache: the hidden part of a segment register."""
    _fields_ = [("selector", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class CpuError(RuntimeError):
    """The Unicorn build does not look like the one this CPU model was verified against."""


class QemuState:
    """ctypes views of one Unicorn instance's CPU state, located and verified on construction.

    Locating runs two tiny programs at PROBE_CODE (zeroed afterwards) and leaves the registers
    dirty: the caller resets the CPU before use, and installs no hooks before this runs."""

    def __init__(self, uc: Uc):
        env, dr = _locate_env(uc)
        self.env, self.dr_offset = env, dr
        self.gpr = (ctypes.c_uint64 * 8).from_address(env)
        self.eip = ctypes.c_uint64.from_address(env + OFF_EIP)
        self.eflags = ctypes.c_uint64.from_address(env + OFF_EFLAGS)
        self.hflags = ctypes.c_uint32.from_address(env + OFF_HFLAGS)
        self.segs = [SegmentCache.from_address(env + OFF_SEGS + 24 * i) for i in range(6)]
        self.ldtr = SegmentCache.from_address(env + OFF_LDT)
        self.tr = SegmentCache.from_address(env + OFF_TR)
        self.gdtr = SegmentCache.from_address(env + OFF_GDT)
        self.idtr = SegmentCache.from_address(env + OFF_IDT)
        self.cr = (ctypes.c_uint64 * 5).from_address(env + OFF_CR)
        self.error_code = ctypes.c_int32.from_address(env + dr - 64)
        self.is_int = ctypes.c_int32.from_address(env + dr - 60)
        self.old_exception = ctypes.c_int32.from_address(env + dr + 48)
        self.counter, self.halted = _locate_counter_and_halted(uc, env)
        # uc->emu_count, the limit the counting hook compares with, follows uc->emu_counter
        self.count_limit = ctypes.c_uint64.from_address(ctypes.addressof(self.counter) + 8)
        self._verify_layout(uc)

    def _verify_layout(self, uc: Uc) -> None:
        uc.reg_write(X.UC_X86_REG_CR3, 0x7000)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x12345678, 0x57, 0))
        uc.reg_write(X.UC_X86_REG_ESI, 0x31415926)
        ok = (self.cr[3] == 0x7000 and self.gdtr.base == 0x12345678 and self.gdtr.limit == 0x57
              and self.gpr[R_ESI] == 0x31415926)
        if not ok:
            raise CpuError("CPUX86State layout differs from unicorn 2.1.x; this CPU model cannot run")


def _locate_env(uc: Uc) -> tuple[int, int]:
    """(address of the live CPUX86State, offset of DR6 in it)."""
    magic = [int.from_bytes(os.urandom(4), "little") | 1 for _ in range(4)]  # unique per CPU
    for value, reg in zip(magic, (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
                                  X.UC_X86_REG_EBX)):
        uc.reg_write(reg, value)
    pattern = struct.pack("<4Q", *magic)
    for candidate in _find_in_pointees(uc._uch.value, pattern):
        found = _check_env(uc, candidate)
        if found is not None:
            return found
    raise CpuError("cannot locate QEMU's CPUX86State inside this Unicorn build")


def _check_env(uc: Uc, candidate: int) -> tuple[int, int] | None:
    """A copy of the registers is the live state only if an API write shows up in it."""
    probe = int.from_bytes(os.urandom(4), "little") | 1
    uc.reg_write(X.UC_X86_REG_ESI, probe)  # not in the searched pattern: later windows still match
    if ctypes.c_uint64.from_address(candidate + 8 * R_ESI).value != probe:
        return None
    dr = ctypes.string_at(candidate, 8192).find(DR_RESET)
    return (candidate, dr) if dr > 0 else None


def _locate_counter_and_halted(uc: Uc, env: int) -> tuple[ctypes.c_uint64, ctypes.c_int32]:
    """Find uc->emu_counter (Unicorn counts executed instructions there for count-limited runs)
    and QEMU's CPUState.halted (set by HLT), by running two tiny programs."""
    uc.mem_write(PROBE_CODE, b"\x40" * 64 + b"\xf4")  # inc eax x 64; hlt
    uc.reg_write(X.UC_X86_REG_CS, 0)
    uc.reg_write(X.UC_X86_REG_CR0, 0x10)
    uc.emu_start(PROBE_CODE, NO_UNTIL, count=37)
    uch = uc._uch.value
    off = ctypes.string_at(uch, 4096).find(struct.pack("<QQ", 38, 37))
    if off < 0:
        raise CpuError("cannot find Unicorn's instruction counter")
    counter = ctypes.c_uint64.from_address(uch + off)
    not_halted = ctypes.string_at(env - HALTED_WINDOW, HALTED_WINDOW)
    uc.emu_start(PROBE_CODE, NO_UNTIL, count=100)
    halted = ctypes.string_at(env - HALTED_WINDOW, HALTED_WINDOW)
    flips = [off for off in range(0, HALTED_WINDOW, 4)
             if halted[off:off + 4] == b"\1\0\0\0" and not_halted[off:off + 4] == bytes(4)]
    if len(flips) != 1:
        raise CpuError("cannot find QEMU's halted flag")
    uc.mem_write(PROBE_CODE, b"\x00" * 65)
    return counter, ctypes.c_int32.from_address(env - HALTED_WINDOW + flips[0])


def _find_in_pointees(struct_addr: int, pattern: bytes):
    """Yield every place ``pattern`` occurs in the memory the pointers of a C struct point at."""
    maps = _readable_maps()
    for off in range(0, 512, 8):
        ptr = ctypes.c_uint64.from_address(struct_addr + off).value
        end = next((hi for lo, hi in maps if lo <= ptr < hi), None)
        if end is None:
            continue
        window = ctypes.string_at(ptr, min(end - ptr, 1 << 20))
        found = window.find(pattern)
        while found >= 0:
            yield ptr + found
            found = window.find(pattern, found + 1)


def _readable_maps() -> list[tuple[int, int]]:
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            addrs, perms = line.split()[:2]
            if perms.startswith("r"):
                lo, hi = (int(x, 16) for x in addrs.split("-"))
                spans.append((lo, hi))
    return spans

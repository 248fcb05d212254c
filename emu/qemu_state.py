"""QEMU's live CPU state inside one Unicorn instance: CPUX86State, uc->emu_counter, CPUState.halted.

Unicorn's binding costs ~1.5 µs per register access, so this module finds the state (marker
values written through the official API, searched for behind ``uc_struct``'s pointers), verifies
the layout through the API, and hands out ctypes views that read and write it directly. Where the
state lies is a property of the Unicorn build (a ``Layout``), so the search runs once per build:
the layout is kept in a per-user cache (layout_cache.py) and verified against every new instance
before use (markers read back without touching unmapped memory, the counter and halted probes
run); one that does not verify is searched for again and the cache rewritten.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import struct

from unicorn import Uc
from unicorn import x86_const as X

from emu import layout_cache

# CPUX86State offsets (x86_64 target, target_ulong = 8 bytes); verified by _verify_layout().
OFF_EIP, OFF_EFLAGS, OFF_HFLAGS, OFF_SEGS = 128, 136, 176, 184
OFF_LDT, OFF_TR, OFF_GDT, OFF_IDT, OFF_CR = 328, 352, 376, 400, 424
DR_RESET = struct.pack("<QQ", 0xFFFF0FF0, 0x400)  # DR6/DR7 reset values anchor the exception fields
R_ESI = 6  # env->regs[] slot of the register the probes write (QEMU's R_* numbering)
MARKED = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX)  # regs[0..3]

UC_POINTERS = 512     # bytes of uc_struct whose pointers are followed
UC_WINDOW = 4096      # bytes of uc_struct searched for the instruction counter
POINTEE_WINDOW = 1 << 20  # bytes searched behind each pointer
ENV_WINDOW = 8192     # bytes of CPUX86State searched for DR6
HALTED_WINDOW = 0x4000  # CPUState (with its halted flag) precedes CPUX86State inside X86CPU
NO_UNTIL = 1 << 48  # an "until" address no 32-bit guest can reach (ignored in exits mode)
PROBE_CODE = 0x1000  # guest-physical scratch address of the counter/halted probe program
PROBE = b"\x40" * 64 + b"\xf4"  # inc eax x 64; hlt
COUNTED = struct.pack("<QQ", 38, 37)  # uc->emu_counter, uc->emu_count after the 37-step probe


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one Unicorn build keeps the state: ``pointer``, the offset in uc_struct of the
    pointer to the block holding CPUX86State; ``env``, CPUX86State's offset in that block;
    ``dr``, DR6's offset in CPUX86State; ``counter``, uc->emu_counter's offset in uc_struct;
    ``halted``, CPUState.halted's offset from CPUX86State (negative: CPUState comes first)."""
    pointer: int
    env: int
    dr: int
    counter: int
    halted: int

    def plausible(self) -> bool:
        """Within the windows the search looks at (a cached layout is checked before use)."""
        return (0 <= self.pointer < UC_POINTERS and self.pointer % 8 == 0
                and 0 <= self.env < POINTEE_WINDOW and 64 <= self.dr <= ENV_WINDOW - 56
                and 0 <= self.counter <= UC_WINDOW - 16
                and -HALTED_WINDOW <= self.halted < 0 and self.halted % 4 == 0)


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
        env, layout = _locate(uc)
        dr = layout.dr
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
        self.counter = ctypes.c_uint64.from_address(uc._uch.value + layout.counter)
        self.halted = ctypes.c_int32.from_address(env + layout.halted)
        # CPUState: uint32_t halted, can_do_io; int32_t exception_index (hw/core/cpu.h)
        self.exception_index = ctypes.c_int32.from_address(env + layout.halted + 8)
        # uc->emu_count, the limit the counting hook compares with, follows uc->emu_counter
        self.count_limit = ctypes.c_uint64.from_address(ctypes.addressof(self.counter) + 8)
        self._verify_layout(uc)

    def _verify_layout(self, uc: Uc) -> None:
        uc.reg_write(X.UC_X86_REG_CR3, 0x7000)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x12345678, 0x57, 0))
        uc.reg_write(X.UC_X86_REG_ESI, 0x31415926)
        ok = (self.cr[3] == 0x7000 and self.gdtr.base == 0x12345678 and self.gdtr.limit == 0x57
              and self.gpr[R_ESI] == 0x31415926 and self.exception_index.value == -1)
        if not ok:
            raise CpuError("CPUX86State layout differs from unicorn 2.1.x; this CPU model cannot run")


def _locate(uc: Uc) -> tuple[int, Layout]:
    """(address of the live CPUX86State, the layout): the cached layout when it verifies on this
    instance, else a search (whose result is cached)."""
    key = layout_cache.library_key()
    cached = layout_cache.load(key) if key else None
    if cached is not None:
        layout = Layout(**cached)
        env = _verified_env(uc, layout)
        if env is not None:
            return env, layout
    layout = _search(uc)
    env = _verified_env(uc, layout)
    if env is None:
        raise CpuError("QEMU's CPU state found in this Unicorn build does not verify")
    if key:
        layout_cache.store(key, dataclasses.asdict(layout))
    return env, layout


def _verified_env(uc: Uc, layout: Layout) -> int | None:
    """CPUX86State's address if ``layout`` holds for this instance: API writes show up where it
    says (read without touching unmapped memory) and the counter and halted probes agree."""
    if not layout.plausible():
        return None
    uch = uc._uch.value
    env = ctypes.c_uint64.from_address(uch + layout.pointer).value + layout.env
    pattern = _mark(uc)
    probe = _mark_esi(uc)
    state = _safe_read(env, ENV_WINDOW)
    if (state is None or state[:32] != pattern or state[8 * R_ESI:8 * R_ESI + 8] != probe
            or state[layout.dr:layout.dr + 16] != DR_RESET):
        return None
    return env if _probes_agree(uc, uch + layout.counter, env + layout.halted) else None


def _probes_agree(uc: Uc, counter: int, halted: int) -> bool:
    """Run 37 instructions of the probe (the counter must read 38, the limit 37), then to its
    HLT (the halted flag must go from 0 to 1)."""
    _start_probe(uc, 37)
    counted = ctypes.string_at(counter, 16) == COUNTED
    running = ctypes.c_int32.from_address(halted).value == 0
    _start_probe(uc, 100)
    stopped = ctypes.c_int32.from_address(halted).value == 1
    uc.mem_write(PROBE_CODE, bytes(len(PROBE)))
    return counted and running and stopped


def _start_probe(uc: Uc, count: int) -> None:
    uc.mem_write(PROBE_CODE, PROBE)
    uc.reg_write(X.UC_X86_REG_CS, 0)
    uc.reg_write(X.UC_X86_REG_CR0, 0x10)
    uc.emu_start(PROBE_CODE, NO_UNTIL, count=count)


def _mark(uc: Uc) -> bytes:
    """Write random markers to EAX..EBX (unique per CPU); their image in env->regs[0..3]."""
    magic = [int.from_bytes(os.urandom(4), "little") | 1 for _ in MARKED]
    for value, reg in zip(magic, MARKED):
        uc.reg_write(reg, value)
    return struct.pack("<4Q", *magic)


def _mark_esi(uc: Uc) -> bytes:
    probe = int.from_bytes(os.urandom(4), "little") | 1
    uc.reg_write(X.UC_X86_REG_ESI, probe)
    return struct.pack("<Q", probe)


def _safe_read(address: int, length: int) -> bytes | None:
    """``length`` bytes of this process's memory, None if any is unmapped (read through
    /proc/self/mem, which fails where a ctypes read would crash)."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, length, address)
    except (OSError, OverflowError):
        return None
    finally:
        os.close(fd)
    return data if len(data) == length else None


def _search(uc: Uc) -> Layout:
    """Find the layout by scanning memory (the slow path: once per Unicorn build)."""
    uch = uc._uch.value
    pattern = _mark(uc)
    for candidate in _find_in_pointees(uch, pattern):
        dr = _check_env(uc, candidate)
        if dr is not None:
            pointer, block = _nearest_pointer(uch, candidate)
            counter, halted = _search_counter_and_halted(uc, candidate)
            return Layout(pointer, candidate - block, dr, counter, halted)
    raise CpuError("cannot locate QEMU's CPUX86State inside this Unicorn build")


def _nearest_pointer(uch: int, env: int) -> tuple[int, int]:
    """(offset in uc_struct, value) of the pointer closest below ``env``: the object that holds
    CPUX86State (X86CPU), the same for every instance, unlike whichever pointer the search
    happened to find env behind."""
    pointers = (ctypes.c_uint64.from_address(uch + off).value for off in range(0, UC_POINTERS, 8))
    _delta, off, ptr = min((env - ptr, off, ptr) for off, ptr in zip(range(0, UC_POINTERS, 8),
                                                                      pointers)
                           if 0 <= env - ptr < POINTEE_WINDOW)
    return off, ptr


def _check_env(uc: Uc, candidate: int) -> int | None:
    """A copy of the registers is the live state only if an API write shows up in it: then the
    offset of DR6 in it."""
    probe = _mark_esi(uc)  # not in the searched pattern: later windows still match
    if ctypes.string_at(candidate + 8 * R_ESI, 8) != probe:
        return None
    dr = ctypes.string_at(candidate, ENV_WINDOW).find(DR_RESET)
    return dr if dr > 0 else None


def _search_counter_and_halted(uc: Uc, env: int) -> tuple[int, int]:
    """The offsets of uc->emu_counter (Unicorn counts executed instructions there for
    count-limited runs) in uc_struct and of QEMU's CPUState.halted (set by HLT) from env, found
    by running the probe."""
    _start_probe(uc, 37)
    uch = uc._uch.value
    counter = ctypes.string_at(uch, UC_WINDOW).find(COUNTED)
    if counter < 0:
        raise CpuError("cannot find Unicorn's instruction counter")
    not_halted = ctypes.string_at(env - HALTED_WINDOW, HALTED_WINDOW)
    _start_probe(uc, 100)
    halted = ctypes.string_at(env - HALTED_WINDOW, HALTED_WINDOW)
    uc.mem_write(PROBE_CODE, bytes(len(PROBE)))
    flips = [off for off in range(0, HALTED_WINDOW, 4)
             if halted[off:off + 4] == b"\1\0\0\0" and not_halted[off:off + 4] == bytes(4)]
    if len(flips) != 1:
        raise CpuError("cannot find QEMU's halted flag")
    return counter, flips[0] - HALTED_WINDOW


def _find_in_pointees(struct_addr: int, pattern: bytes):
    """Yield every place ``pattern`` occurs in the memory the pointers of a C struct point at."""
    maps = _readable_maps()
    for off in range(0, UC_POINTERS, 8):
        ptr = ctypes.c_uint64.from_address(struct_addr + off).value
        end = next((hi for lo, hi in maps if lo <= ptr < hi), None)
        if end is None:
            continue
        window = ctypes.string_at(ptr, min(end - ptr, POINTEE_WINDOW))
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

"""The physical x86 CPU: a Unicorn UC_MODE_32 instance with fast register access and raw hooks.

Unicorn's stock binding costs ~1.5 µs per register access, so this module locates QEMU's live
``CPUX86State`` once and reads/writes registers, segment caches, hflags and the pending-exception
state there directly (layout verified at start-up against the official API). Hooks are installed
once with raw ctypes callbacks and dispatched to whatever ``CpuHandler`` an engine attaches.
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Protocol

from unicorn import Uc, UcError, UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE
from unicorn import (UC_HOOK_BLOCK, UC_HOOK_EDGE_GENERATED, UC_HOOK_INTR, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE,
                     UC_MEM_WRITE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_MEM_READ_UNMAPPED,
                     UC_HOOK_MEM_WRITE_UNMAPPED, UC_HOOK_MEM_FETCH_UNMAPPED)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from emu.memory import GuestMemory

# Segment register indices as QEMU numbers them (R_ES .. R_GS).
ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

# General registers in QEMU's regs[] order.
EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")

# EFLAGS bits used by the VMM.
FLAG_TF, FLAG_IF, FLAG_DF, FLAG_NT, FLAG_RF, FLAG_VM, FLAG_AC = (
    1 << 8, 1 << 9, 1 << 10, 1 << 14, 1 << 16, 1 << 17, 1 << 18)
IOPL_SHIFT = 12
IOPL_MASK = 3 << IOPL_SHIFT

# Descriptor-cache flag bits (QEMU keeps the descriptor's high dword & 0x00f0ff00).
DESC_TYPE_SHIFT = 8
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_B = 1 << 22
DESC_G = 1 << 23

# QEMU hflags bits.
HF_CPL_MASK = 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_CS64 = 1 << 15

# CPUX86State offsets (x86_64 target, target_ulong = 8 bytes); verified by _verify_layout().
OFF_EIP, OFF_EFLAGS, OFF_HFLAGS, OFF_SEGS = 128, 136, 176, 184
OFF_LDT, OFF_TR, OFF_GDT, OFF_IDT, OFF_CR = 328, 352, 376, 400, 424
DR_RESET = struct.pack("<QQ", 0xFFFF0FF0, 0x400)  # DR6/DR7 reset values anchor the exception fields

HALTED_WINDOW = 0x4000  # CPUState (with its halted flag) precedes CPUX86State inside X86CPU
NO_UNTIL = 1 << 48  # an "until" address no 32-bit guest can reach (ignored in exits mode)

_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                          ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                           ctypes.c_void_p)
_BOOL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_BLOCK_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                             ctypes.c_void_p)
_MEM_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                           ctypes.c_int64, ctypes.c_void_p)
_EDGE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p)
_UNMAPPED_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64,
                                ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)


class TranslationBlock(ctypes.Structure):
    """Unicorn's uc_tb: a newly translated block (linear start, instruction count, byte size)."""
    _fields_ = [("pc", ctypes.c_uint64), ("icount", ctypes.c_uint16), ("size", ctypes.c_uint16)]


class SegmentCache(ctypes.Structure):
    """QEMU's SegmentCache: the hidden part of a segment register."""
    _fields_ = [("selector", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class CpuError(RuntimeError):
    """The Unicorn build does not look like the one this CPU model was verified against."""


class CpuHandler(Protocol):
    """What an engine attaches to the CPU; every method runs inside a Unicorn hook."""

    def on_interrupt(self, intno: int) -> None: ...
    def on_in(self, port: int, size: int) -> int: ...
    def on_out(self, port: int, size: int, value: int) -> None: ...
    def on_cpuid(self) -> bool: ...
    def on_invalid_opcode(self) -> bool: ...
    def on_unmapped(self, access: int, address: int, size: int, value: int) -> bool: ...


class Cpu:
    """One x86 CPU in UC_MODE_32, reset to real mode, executing from a GuestMemory."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uch = self.uc._uch
        self.uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.address)
        self._rbuf = ctypes.c_uint64()
        self._locate_env()
        self._locate_counter()
        self._verify_layout()
        self.handler: CpuHandler | None = None
        self._budget = 0
        self._counting = True
        self.hook_error: BaseException | None = None
        self._callbacks: list = []
        self._block_hook: int | None = None
        self._translation_hook: int | None = None
        self._exits: dict[str, frozenset[int]] = {}
        self._install_hooks()
        # Exits mode, with no exits: Unicorn ignores `until`, and no longer ends every run by
        # looking up the code page of until-1 (with guest paging on, that lookup page-faults
        # behind our back: CR2 = 0xffffffff and a pending #PF that turns the next fault to #DF).
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self.reset_real_mode()

    # ----- locating QEMU state -------------------------------------------------------------
    def _locate_env(self) -> None:
        magic = [int.from_bytes(os.urandom(4), "little") | 1 for _ in range(4)]  # unique per CPU
        for value, reg in zip(magic, (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
                                      X.UC_X86_REG_EBX)):
            self.uc.reg_write(reg, value)
        pattern = struct.pack("<4Q", *magic)
        self.env, dr = next(filter(None, map(self._check_env, _find_in_pointees(
            self.uch.value, pattern))), (None, None))
        if self.env is None:
            raise CpuError("cannot locate QEMU's CPUX86State inside this Unicorn build")
        self._error_code = ctypes.c_int32.from_address(self.env + dr - 64)
        self._is_int = ctypes.c_int32.from_address(self.env + dr - 60)
        self._old_exception = ctypes.c_int32.from_address(self.env + dr + 48)
        self.gpr = (ctypes.c_uint64 * 8).from_address(self.env)
        self.eip_reg = ctypes.c_uint64.from_address(self.env + OFF_EIP)  # raw, for hot handlers
        self._eflags = ctypes.c_uint64.from_address(self.env + OFF_EFLAGS)
        self._hflags = ctypes.c_uint32.from_address(self.env + OFF_HFLAGS)
        self.segs = [SegmentCache.from_address(self.env + OFF_SEGS + 24 * i) for i in range(6)]
        self.ldtr = SegmentCache.from_address(self.env + OFF_LDT)
        self.tr = SegmentCache.from_address(self.env + OFF_TR)
        self.gdtr = SegmentCache.from_address(self.env + OFF_GDT)
        self.idtr = SegmentCache.from_address(self.env + OFF_IDT)
        self.cr = (ctypes.c_uint64 * 5).from_address(self.env + OFF_CR)

    def _check_env(self, candidate: int) -> tuple[int, int] | None:
        """A copy of the registers is the live state only if an API write shows up in it."""
        probe = int.from_bytes(os.urandom(4), "little") | 1
        self.uc.reg_write(X.UC_X86_REG_ESI, probe)
        if ctypes.c_uint64.from_address(candidate + 8 * ESI).value != probe:
            return None
        dr = ctypes.string_at(candidate, 8192).find(DR_RESET)
        return (candidate, dr) if dr > 0 else None

    def _locate_counter(self) -> None:
        """Find uc->emu_counter (Unicorn counts executed instructions there for count-limited
        runs) and QEMU's CPUState.halted (set by HLT), by running two tiny programs."""
        self.uc.mem_write(0x1000, b"\x40" * 64 + b"\xf4")  # inc eax x 64; hlt
        self.uc.reg_write(X.UC_X86_REG_CS, 0)
        self.uc.reg_write(X.UC_X86_REG_CR0, 0x10)
        self.uc.emu_start(0x1000, NO_UNTIL, count=37)
        raw = ctypes.string_at(self.uch.value, 4096)
        off = raw.find(struct.pack("<QQ", 38, 37))
        if off < 0:
            raise CpuError("cannot find Unicorn's instruction counter")
        self._counter = ctypes.c_uint64.from_address(self.uch.value + off)
        not_halted = ctypes.string_at(self.env - HALTED_WINDOW, HALTED_WINDOW)
        self.uc.emu_start(0x1000, NO_UNTIL, count=100)
        halted = ctypes.string_at(self.env - HALTED_WINDOW, HALTED_WINDOW)
        flips = [off for off in range(0, HALTED_WINDOW, 4)
                 if halted[off:off + 4] == b"\1\0\0\0" and not_halted[off:off + 4] == bytes(4)]
        if len(flips) != 1:
            raise CpuError("cannot find QEMU's halted flag")
        self._halted = ctypes.c_int32.from_address(self.env - HALTED_WINDOW + flips[0])
        self.uc.mem_write(0x1000, b"\x00" * 65)

    def _verify_layout(self) -> None:
        self.uc.reg_write(X.UC_X86_REG_CR3, 0x7000)
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x12345678, 0x57, 0))
        self.uc.reg_write(X.UC_X86_REG_ESI, 0x31415926)
        ok = (self.cr[3] == 0x7000 and self.gdtr.base == 0x12345678 and self.gdtr.limit == 0x57
              and self.gpr[ESI] == 0x31415926)
        if not ok:
            raise CpuError("CPUX86State layout differs from unicorn 2.1.x; this CPU model cannot run")

    def reset_real_mode(self) -> None:
        """Power-on-like state: real mode, all registers zero, IDTR = IVT at 0 (limit 0x3FF)."""
        for reg in range(8):
            self.gpr[reg] = 0
        self.uc.reg_write(X.UC_X86_REG_CR3, 0)
        self.uc.reg_write(X.UC_X86_REG_CR4, 0)
        self.uc.reg_write(X.UC_X86_REG_CR0, 0x10)
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        self.uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        for seg in (CS, DS, ES, SS, FS, GS):
            self.load_real_segment(seg, 0)

    # ----- hooks --------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        self._hook(UC_HOOK_INTR, _INTR_CB(self._intr_cb))
        self._hook(UC_HOOK_INSN, _IN_CB(self._in_cb), insn=X.UC_X86_INS_IN)
        self._hook(UC_HOOK_INSN, _OUT_CB(self._out_cb), insn=X.UC_X86_INS_OUT)
        self._hook(UC_HOOK_INSN, _BOOL_CB(self._cpuid_cb), insn=X.UC_X86_INS_CPUID)
        self._hook(UC_HOOK_INSN_INVALID, _BOOL_CB(self._invalid_cb))
        unmapped = UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
        self._hook(unmapped, _UNMAPPED_CB(self._unmapped_cb))

    def attach(self, handler: CpuHandler) -> None:
        """Route every hook to ``handler`` (bound methods cached: hooks are the exit hot path)."""
        self.handler = handler
        self._on_interrupt = handler.on_interrupt
        self._on_in = handler.on_in
        self._on_out = handler.on_out

    # Raw ctypes callbacks. A Python exception cannot cross into C: it stops the CPU and run()'s
    # caller finds it in hook_error.
    def _intr_cb(self, _uc, intno, _ud):
        try:
            self._on_interrupt(intno)
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)

    def _in_cb(self, _uc, port, size, _ud):
        try:
            return self._on_in(port, size)
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)
            return 0

    def _out_cb(self, _uc, port, size, value, _ud):
        try:
            self._on_out(port, size, value)
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)

    def _cpuid_cb(self, _uc, _ud):
        try:
            return self.handler.on_cpuid()
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)
            return False

    def _invalid_cb(self, _uc, _ud):
        try:
            return self.handler.on_invalid_opcode()
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)
            return False

    def _unmapped_cb(self, _uc, access, address, size, value, _ud):
        try:
            return self.handler.on_unmapped(access, address, size, value)
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)
            return False

    def _hook_failed(self, exc: BaseException) -> None:
        if self.hook_error is None:
            self.hook_error = exc
        self.stop()

    def set_exits(self, linear_addresses, owner: str = "debugger") -> None:
        """Stop before executing any of these linear addresses (Unicorn's exits). Each owner (the
        debugger's breakpoints, an engine's translated sites) keeps its own set; the CPU stops at
        their union. Unicorn checks exits when it translates a block, so the blocks holding a new
        exit are invalidated (it only re-translates those at exit-1 after each run by itself)."""
        before = set().union(*self._exits.values())
        self._exits[owner] = frozenset(linear_addresses)
        after = set().union(*self._exits.values())
        if after == before:
            return
        self.uc.ctl_set_exits(sorted(after))
        for address in after ^ before:
            self.uc.ctl_remove_cache(address, address + 1)

    def watch_translations(self, callback) -> None:
        """Call ``callback(linear, size)`` for every block Unicorn translates, before it first
        runs (UC_HOOK_EDGE_GENERATED: at translation time, never per execution). Blocks already
        translated are flushed so that every block passes through the callback."""
        self._translation_callback = lambda linear, size: None
        self._translation_hook = self._hook(UC_HOOK_EDGE_GENERATED, _EDGE_CB(self._edge_cb))
        self._warm_up()
        self._translation_callback = callback

    def _warm_up(self) -> None:
        """Unicorn reports a new block only once some block has run to its end (one ended by HLT
        or a fault does not count): run JMP $+2; HLT at address 0 (restored afterwards), then
        flush every translated block."""
        saved, eip = self.memory.read(0, 3), self.eip
        self.memory.write(0, b"\xeb\x00\xf4")
        self.eip = 0
        self.run(0)
        self.memory.write(0, saved)
        self.eip = eip
        self.uc.ctl_flush_tb()

    def _edge_cb(self, _uc, current, _previous, _ud):
        try:
            block = TranslationBlock.from_address(current)
            self._translation_callback(block.pc & 0xFFFFFFFF, block.size)
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)

    def watch_memory(self, start: int, end: int, callback, reads: bool, writes: bool) -> int:
        """Call ``callback(address, size, is_write)`` before guest loads and/or stores to
        physical [start, end]. A memory hook slows every load or store: debugging only."""
        htype = (UC_HOOK_MEM_READ if reads else 0) | (UC_HOOK_MEM_WRITE if writes else 0)
        handle = self._hook(htype, _MEM_CB(self._make_memory_cb(callback)), start, end)
        self.uc.ctl_flush_tb()
        return handle

    def _make_memory_cb(self, callback):
        def memory_cb(_uc, access, address, size, _value, _ud):
            try:
                callback(address, size, access == UC_MEM_WRITE)
            except BaseException as exc:  # noqa: BLE001
                self._hook_failed(exc)
        return memory_cb

    def unhook(self, handle: int) -> None:
        uclib.uc_hook_del(self.uch, handle)

    def watch_blocks(self, callback) -> None:
        """Call ``callback()`` at the start of every translation block until unwatch_blocks().

        A per-block Python hook is slow; the vCPU arms it only while an interrupt waits for the
        guest to set IF (QEMU ends a block after STI, POPF and IRET, so the window is seen at the
        next instruction). Cached blocks are flushed so that they pick the hook up."""
        if self._block_hook is None:
            self._block_callback = callback
            self._block_hook = self._hook(UC_HOOK_BLOCK, _BLOCK_CB(self._block_cb))
            self.uc.ctl_flush_tb()

    def unwatch_blocks(self) -> None:
        if self._block_hook is not None:
            uclib.uc_hook_del(self.uch, self._block_hook)
            self._block_hook = None

    def _block_cb(self, _uc, _address, _size, _ud):
        try:
            self._block_callback()
        except BaseException as exc:  # noqa: BLE001
            self._hook_failed(exc)

    def _hook(self, htype: int, cfunc, begin: int = 1, end: int = 0, insn: int | None = None) -> int:
        handle = ctypes.c_size_t()
        args = [] if insn is None else [ctypes.c_int(insn)]
        err = uclib.uc_hook_add(self.uch, ctypes.byref(handle), htype,
                                ctypes.cast(cfunc, ctypes.c_void_p), None,
                                ctypes.c_uint64(begin), ctypes.c_uint64(end), *args)
        if err:
            raise UcError(err)
        self._callbacks.append(cfunc)
        return handle.value

    # ----- running ------------------------------------------------------------------------------
    def run(self, count: int) -> int:
        """Run from CS:EIP for at most ``count`` instructions; return the Unicorn error code.

        ``count`` = 0 runs uncounted (Unicorn's per-instruction counting hook makes code ~3-4x
        slower) until something stops it. Blocks translated while uncounted lack the counting
        hook, so the first counted run after one flushes the block cache."""
        self.hook_error = None
        self._budget = count
        if count and not self._counting:
            self.uc.ctl_flush_tb()
        self._counting = bool(count)
        return uclib.uc_emu_start(self.uch, self.eip_reg.value, NO_UNTIL, 0, count)

    @property
    def counting(self) -> bool:
        """The current (or last) run counts instructions."""
        return self._counting

    @property
    def halted(self) -> bool:
        """The last run ended on HLT (QEMU's CPUState.halted)."""
        return bool(self._halted.value)

    def executed(self) -> int:
        """Instructions retired so far by the current or last counted run() (faulting ones
        included); 0 for an uncounted run. Unicorn counts an instruction before executing it,
        and counts the one it stops in front of when the budget runs out."""
        return min(self._counter.value, self._budget)

    def stop(self) -> None:
        uclib.uc_emu_stop(self.uch)

    # ----- registers ----------------------------------------------------------------------------
    @property
    def eip(self) -> int:
        return self.eip_reg.value & 0xFFFFFFFF

    @eip.setter
    def eip(self, value: int) -> None:
        self.eip_reg.value = value & 0xFFFFFFFF

    @property
    def eflags(self) -> int:
        """The architectural EFLAGS, arithmetic flags included (one raw API call)."""
        uclib.uc_reg_read(self.uch, X.UC_X86_REG_EFLAGS, ctypes.byref(self._rbuf))
        return self._rbuf.value & 0xFFFFFFFF

    @eflags.setter
    def eflags(self, value: int) -> None:
        self._rbuf.value = value | 2
        uclib.uc_reg_write(self.uch, X.UC_X86_REG_EFLAGS, ctypes.byref(self._rbuf))
        self._eflags.value = (self._eflags.value & ~(FLAG_VM | FLAG_RF)) | (value & (FLAG_VM | FLAG_RF))

    @property
    def system_flags(self) -> int:
        """EFLAGS bits QEMU keeps in env->eflags directly (IF, IOPL, TF, VM, ...): no API call."""
        return self._eflags.value

    def set_system_flags(self, set_mask: int, clear_mask: int) -> None:
        self._eflags.value = (self._eflags.value & ~clear_mask) | set_mask

    @property
    def cpl(self) -> int:
        return self._hflags.value & HF_CPL_MASK

    @property
    def protected(self) -> bool:
        return bool(self.cr[0] & 1)

    @property
    def vm86(self) -> bool:
        return bool(self._eflags.value & FLAG_VM)

    @property
    def code_bits(self) -> int:
        return 32 if self._hflags.value & HF_CS32 else 16

    @property
    def stack_bits(self) -> int:
        return 32 if self._hflags.value & HF_SS32 else 16

    def linear_pc(self) -> int:
        return (self.segs[CS].base + self.eip) & 0xFFFFFFFF

    def write_cr(self, n: int, value: int) -> None:
        """MOV to CRn with its side effects (mode bits, TLB flush), through the Unicorn API."""
        reg = (X.UC_X86_REG_CR0, None, X.UC_X86_REG_CR2, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)[n]
        self._rbuf.value = value & 0xFFFFFFFF
        uclib.uc_reg_write(self.uch, reg, ctypes.byref(self._rbuf))

    def set_table(self, which: str, base: int, limit: int) -> None:
        """Load GDTR or IDTR (which = 'gdtr' | 'idtr')."""
        reg = X.UC_X86_REG_GDTR if which == "gdtr" else X.UC_X86_REG_IDTR
        self.uc.reg_write(reg, (0, base & 0xFFFFFFFF, limit & 0xFFFF, 0))

    def flush_tlb(self) -> None:
        """Drop every cached translation (INVLPG and host-side page-table edits)."""
        uclib.uc_ctl(self.uch, UC_CTL_TLB_FLUSH | (UC_CTL_IO_WRITE << 30))

    def msr_read(self, index: int) -> int:
        return self.uc.msr_read(index)

    def msr_write(self, index: int, value: int) -> None:
        self.uc.msr_write(index, value)

    # ----- exceptions ---------------------------------------------------------------------------
    def take_exception(self) -> tuple[int, bool]:
        """(error code, raised by INT n/INT3/INTO) of the hooked event; clears QEMU's fault state.

        Unicorn never resets env->old_exception on the hook path, so without this the next fault
        becomes #DF and the one after a silent stop (Unicorn issue #1883)."""
        self._old_exception.value = -1
        return self._error_code.value & 0xFFFFFFFF, bool(self._is_int.value)

    # ----- segments -----------------------------------------------------------------------------
    def load_segment(self, seg: int, selector: int, base: int, limit: int, flags: int) -> None:
        """Write a segment register's hidden cache directly, then recompute QEMU's hflags."""
        cache = self.segs[seg]
        cache.selector = selector & 0xFFFF
        cache.base = base & 0xFFFFFFFF
        cache.limit = limit & 0xFFFFFFFF
        cache.flags = flags
        self._recompute_hflags()

    def load_real_segment(self, seg: int, selector: int, dpl: int = 0) -> None:
        """A real-mode or virtual-8086 style load: base = selector * 16, 64 KiB limit."""
        flags = DESC_P | DESC_S | (2 << DESC_TYPE_SHIFT) | (dpl << DESC_DPL_SHIFT)
        if seg == CS:
            flags |= 0xB << DESC_TYPE_SHIFT
        self.load_segment(seg, selector, selector << 4, 0xFFFF, flags)

    def _recompute_hflags(self) -> None:
        """Derive CPL, CS32, SS32 and ADDSEG from the segment caches as QEMU's loads do."""
        segs = self.segs
        hf = self._hflags.value & ~(HF_CPL_MASK | HF_CS32 | HF_SS32 | HF_ADDSEG | HF_CS64)
        hf |= (segs[SS].flags >> DESC_DPL_SHIFT) & 3
        if segs[CS].flags & DESC_B:
            hf |= HF_CS32
        if segs[SS].flags & DESC_B:
            hf |= HF_SS32
        if not (self.cr[0] & 1) or self.vm86 or not hf & HF_CS32:
            hf |= HF_ADDSEG
        elif segs[DS].base | segs[ES].base | segs[SS].base:
            hf |= HF_ADDSEG
        self._hflags.value = hf

    def close(self) -> None:
        self.uc = None
        self._callbacks.clear()


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

"""The physical x86 CPU: a Unicorn UC_MODE_32 instance driven through direct views of QEMU's state.

Registers, segment caches, hflags and the pending-exception fields are ctypes views located by
emu/qemu_state.py (~0.05 µs per access instead of the binding's ~1.5 µs); hooks, watches and exits
live in emu/hooks.py, the virtual TLB (whose fill handler is the VMM's MMU) in emu/tlb.py. The Cpu
composes them and adds running, control registers and MSRs.
"""
from __future__ import annotations

import ctypes

from unicorn import Uc, UcError, UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL
from unicorn import (UC_ERR_EXCEPTION, UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID, UC_ERR_READ_UNMAPPED,
                     UC_ERR_WRITE_UNMAPPED)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from emu.divide_guard import DivideGuard
from emu.hooks import CpuHandler, Hooks
from emu.memory import GuestMemory
from emu.paging import Fault
from emu.qemu_state import NO_UNTIL, QemuState
from emu.tlb import PROT_ALL, Fill, VirtualTlb

PAGE_MASK = 0xFFF

# IA32_EFER and the bits this CPU's CPUID lets a WRMSR write (SCE, LME, NXE; LMA is read-only
# and ignored): any other bit is reserved and makes the WRMSR #GP(0) (SDM Vol. 4, Table 2-2).
IA32_EFER = 0xC0000080
EFER_WRITABLE = 1 << 0 | 1 << 8 | 1 << 10 | 1 << 11
GP = 13

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

RUN_ERRORS = {UC_ERR_READ_UNMAPPED: "read from unmapped memory",
              UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
              UC_ERR_FETCH_UNMAPPED: "fetch from unmapped memory",
              UC_ERR_INSN_INVALID: "an invalid instruction",
              UC_ERR_EXCEPTION: "an unhandled CPU exception"}


def describe_run_error(err: int) -> str:
    """What a nonzero Cpu.run() result means, as a noun phrase ("an invalid instruction")."""
    return RUN_ERRORS.get(err) or f"Unicorn error {err} ({UcError(err)})"


class Cpu:
    """One x86 CPU in UC_MODE_32, reset to real mode, executing from a GuestMemory."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self._uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self._uch = self._uc._uch
        self._uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.address)
        self._rbuf = ctypes.c_uint64()
        state = QemuState(self._uc)
        self.gpr, self.segs, self.cr = state.gpr, state.segs, state.cr
        self.ldtr, self.tr, self.gdtr, self.idtr = state.ldtr, state.tr, state.gdtr, state.idtr
        self.eip_reg = state.eip  # raw, for hot handlers
        self._eflags, self._hflags = state.eflags, state.hflags
        self._error_code, self._is_int = state.error_code, state.is_int
        self._old_exception = state.old_exception
        self._counter, self._halted = state.counter, state.halted
        self._count_limit = state.count_limit
        self._env, self._dr_offset = state.env, state.dr_offset
        self._budget = self._limit = 0
        self._counting = True
        self.mmio_retry = False
        self._mmio_pages: set[int] = set()
        self.hook_error: BaseException | None = None
        self.on_hook_error = None  # called with the exception, inside the failing hook
        self._hooks = Hooks(self._uc, self._hook_failed, self._stop_after_access)
        self.tlb = VirtualTlb(self._uc, self._hooks.add_hook, self._hook_failed, state,
                              self._exit_lookup)
        self.tlb.set_fill(self._physical_fill)
        self.reset_real_mode()
        guard = DivideGuard(self._uch, self._hooks, self.gpr, lambda: self.code_bits, self.stop)
        self._divide_taken = guard.exception_taken
        self._hooks.before_exception = self._exception_taken
        self.watch_translations(guard.scan)

    def reset_real_mode(self) -> None:
        """Power-on-like state: real mode, all registers zero, IDTR = IVT at 0 (limit 0x3FF)."""
        for reg in range(8):
            self.gpr[reg] = 0
        self._uc.reg_write(X.UC_X86_REG_CR3, 0)
        self._uc.reg_write(X.UC_X86_REG_CR4, 0)
        self._uc.reg_write(X.UC_X86_REG_CR0, 0x10)
        self._uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        self._uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        self._uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        for seg in (CS, DS, ES, SS, FS, GS):
            self.load_real_segment(seg, 0)

    # ----- hooks (emu/hooks.py) -----------------------------------------------------------------
    def attach(self, handler: CpuHandler) -> None:
        """Route every hook to ``handler``."""
        self._hooks.attach(handler)

    def _hook_failed(self, exc: BaseException) -> None:
        """A hook raised: stop the CPU; run()'s caller finds the first exception in hook_error.
        ``on_hook_error`` hears of it at once, while the CPU still stands at the instruction that
        made it (Unicorn finishes the current block after a stop: its later hooks must not act)."""
        first = self.hook_error is None
        if first:
            self.hook_error = exc
        self.stop()
        if first and self.on_hook_error is not None:
            self.on_hook_error(exc)

    def _exception_taken(self) -> None:
        """In the interrupt hook, before the handler: finish a #PF the MMU raised (CR2), and
        put back the divide guard's dividend."""
        if self.tlb.fault_pending:
            self.tlb.page_fault_taken()
        self._divide_taken()

    def set_exits(self, linear_addresses, owner: str = "debugger") -> None:
        """Stop before executing any of these linear addresses (see Hooks.set_exits)."""
        self._hooks.set_exits(linear_addresses, owner)

    def hook_code_at(self, linear: int, callback) -> int:
        """Run ``callback`` in front of one instruction, inside the run (see Hooks.hook_code_at)."""
        return self._hooks.hook_code_at(linear, callback)

    def unhook_code(self, handle: int) -> None:
        self._hooks.unhook_code(handle)

    def watch_translations(self, callback) -> None:
        """Call ``callback(linear, size)`` for every block translated from now on."""
        self._hooks.watch_translations(callback, self._run_one_block)

    def _run_one_block(self) -> None:
        """Run JMP $+2; HLT at address 0 (restored afterwards): one block runs to its end."""
        saved, eip = self.memory.read(0, 3), self.eip
        self.memory.write(0, b"\xeb\x00\xf4")
        self.eip = 0
        self.run(0)
        self.memory.write(0, saved)
        self.eip = eip

    def watch_memory(self, start: int, end: int, callback, reads: bool, writes: bool) -> int:
        """Call ``callback(address, size, is_write)`` before guest accesses to physical
        [start, end] (debugging only); return the handle for unhook()."""
        return self._hooks.watch_memory(start, end, callback, reads, writes)

    def unhook(self, handle: int) -> None:
        self._hooks.unhook(handle)

    def map_mmio(self, base: int, size: int) -> None:
        """Send guest accesses to the pages covering [base, base + size) to the handler's
        on_mmio_read/on_mmio_write (pages already sent there are left as they are). MMIO runs
        only in counted runs (see stop): an uncounted run leaves before the access and sets
        ``mmio_retry``, and the vCPU runs it again counted."""
        first, end = base & ~PAGE_MASK, (base + size + PAGE_MASK) & ~PAGE_MASK
        for page in range(first, end, PAGE_MASK + 1):
            if page not in self._mmio_pages:
                self._hooks.map_mmio(page, PAGE_MASK + 1, self._admit_mmio)
                self._mmio_pages.add(page)

    def _admit_mmio(self) -> bool:
        if not self._counting:
            self.mmio_retry = True
            uclib.uc_emu_stop(self._uch)
            return False
        return True

    def _stop_after_access(self) -> None:
        """A stop requested during a device access: lower the run's instruction limit to the
        instructions counted so far, so the counting hook stops before the next one."""
        self._limit = min(self._limit, self._counter.value)
        self._count_limit.value = self._limit

    # ----- running ------------------------------------------------------------------------------
    def run(self, count: int) -> int:
        """Run from CS:EIP for at most ``count`` instructions; return 0 or an error code (see
        describe_run_error).

        ``count`` = 0 runs uncounted (Unicorn's per-instruction counting hook makes code ~3-4x
        slower) until something stops it. Blocks translated while uncounted lack the counting
        hook, so the first counted run after one flushes the block cache."""
        self.hook_error = None
        self._budget = self._limit = count
        self.mmio_retry = False
        if count and not self._counting:
            self._uc.ctl_flush_tb()
        self._counting = bool(count)
        if self.tlb.stale:              # a placeholder grant for an exit lookup (emu/tlb.py)
            self.tlb.flush()
        return uclib.uc_emu_start(self._uch, self.eip_reg.value, NO_UNTIL, 0, count)

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
        return min(self._counter.value, self._limit)

    def stop(self) -> None:
        """Stop at the next instruction boundary.

        Asked from inside a device access (an IN/OUT hook, an MMIO callback), Unicorn would stop
        *at* the instruction and run it again on resume: an MMIO store or one iteration of REP
        INS/OUTS would reach the device twice. In a counted run such a stop waits for the access
        to end and then lowers the run's limit (the counting hook stops before the next
        instruction or REP iteration); an uncounted run has no such boundary and stops at once
        (MMIO never runs uncounted; a port access ends a run only when it reprograms a device,
        which needs no repeat)."""
        hooks = self._hooks
        if hooks.in_access and self._counting:
            hooks.stop_deferred = True
            return
        uclib.uc_emu_stop(self._uch)

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
        uclib.uc_reg_read(self._uch, X.UC_X86_REG_EFLAGS, ctypes.byref(self._rbuf))
        return self._rbuf.value & 0xFFFFFFFF

    @eflags.setter
    def eflags(self, value: int) -> None:
        self._rbuf.value = value | 2
        uclib.uc_reg_write(self._uch, X.UC_X86_REG_EFLAGS, ctypes.byref(self._rbuf))
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
        uclib.uc_reg_write(self._uch, reg, ctypes.byref(self._rbuf))

    def set_table(self, which: str, base: int, limit: int) -> None:
        """Load GDTR or IDTR (which = 'gdtr' | 'idtr')."""
        reg = X.UC_X86_REG_GDTR if which == "gdtr" else X.UC_X86_REG_IDTR
        self._uc.reg_write(reg, (0, base & 0xFFFFFFFF, limit & 0xFFFF, 0))

    def flush_translations(self) -> None:
        """Drop every translated block: code the host changed in guest memory is re-translated."""
        self._uc.ctl_flush_tb()

    def flush_tlb(self) -> None:
        """Drop every cached linear-to-physical translation (INVLPG, host-side page-table edits)."""
        self.tlb.flush()

    def _exit_lookup(self, page: int) -> bool:
        """A fetch fill for a page holding a Unicorn exit that the CPU is not executing on (nor
        about to enter): Unicorn's own lookup of the exit's code page, not a guest fetch."""
        return (page in self._hooks.exit_pages
                and (page - (self.linear_pc() & ~PAGE_MASK)) & 0xFFFFFFFF not in (0, PAGE_MASK + 1))

    def set_mmu(self, fill: Fill) -> None:
        """Make ``fill`` the MMU that answers every TLB miss (see emu/tlb.py)."""
        self.tlb.set_fill(fill)

    def _physical_fill(self, page: int, _access: int) -> tuple[int, int] | None:
        """The MMU until a VMM installs its own: linear = physical, RAM and MMIO windows only."""
        if page < self.memory.size or page in self._mmio_pages:
            return page, PROT_ALL
        return None

    def is_mmio_page(self, page: int) -> bool:
        """A guest-physical page behind which an MMIO window sits (see map_mmio)."""
        return page in self._mmio_pages

    def msr_read(self, index: int) -> int:
        """RDMSR on the real CPU, without the guest's privilege checks."""
        return self._uc.msr_read(index)

    def msr_write(self, index: int, value: int) -> None:
        """WRMSR on the real CPU (with its side effects), without the guest's privilege checks.
        A reserved IA32_EFER bit is the CPU's #GP(0) (Fault), which QEMU would drop silently."""
        if index == IA32_EFER and value & ~EFER_WRITABLE:
            raise Fault(GP, 0)
        self._uc.msr_write(index, value)

    # ----- the whole state (snapshots) ----------------------------------------------------------
    def save_context(self) -> bytes:
        """QEMU's CPUX86State up to ``end_reset_fields``, as Unicorn's uc_context_save copies it:
        general, segment (with hidden caches), descriptor-table, control and debug registers,
        EFLAGS with the lazy condition codes, hflags/hflags2 (the interrupt shadow among them),
        the FPU/MMX/SSE file, the MSRs QEMU keeps (EFER, SYSENTER, STAR, PAT, TSC, ...) and the
        exception in flight. The DR0-3 breakpoint pointers that share it are host addresses:
        they are zeroed here and never restored."""
        data = bytearray(self._context_bytes())
        pointers = self._dr_offset + 16  # dr[0..7] then cpu_breakpoint[4], DR6 at dr[6]
        data[pointers:pointers + 32] = bytes(32)
        return bytes(data)

    def _context_bytes(self) -> bytes:
        """uc_context_save's copy of CPUX86State: the context's data[], whose length is the
        context's first field (context_size)."""
        raw = bytes(self._uc.context_save())
        return raw[-int.from_bytes(raw[:8], "little"):]

    def load_context(self, data: bytes) -> None:
        """Put back what save_context returned (in this process or another with the same
        Unicorn build), keeping this process's breakpoint pointers, then drop every cached
        translation and TLB entry: they were made for the state replaced."""
        size = len(self._context_bytes())
        if len(data) != size:
            raise ValueError(f"the saved CPU state is {len(data)} bytes; this Unicorn build's "
                             f"CPUX86State is {size}: it was saved by a different build")
        pointers = self._dr_offset + 16
        live = ctypes.string_at(self._env + pointers, 32)
        ctypes.memmove(self._env, data[:pointers] + live + data[pointers + 32:], size)
        self.flush_translations()
        self.flush_tlb()

    # ----- exceptions ---------------------------------------------------------------------------
    def take_exception(self) -> tuple[int, bool]:
        """(error code, raised by INT n/INT3/INTO) of the hooked event; clears QEMU's fault state.

        Unicorn never resets env->old_exception on the hook path, so without this the next fault
        becomes #DF and the one after a silent stop (Unicorn issue #1883)."""
        self._old_exception.value = -1
        return self._error_code.value & 0xFFFFFFFF, bool(self._is_int.value)

    @property
    def exception_is_software(self) -> bool:
        """The event in flight was raised by INT n/INT3/INTO (QEMU's exception_is_int)."""
        return bool(self._is_int.value)

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
        """Release the Unicorn instance; the Cpu is unusable afterwards."""
        self._uc = None
        self._hooks.close()

"""The CPU's TLB as a VMM sees it: Unicorn's UC_TLB_VIRTUAL mode, in which QEMU never walks page
tables itself and every TLB miss asks the VMM's MMU for the page (the hardware half of
"the VMM owns the MMU"; the walk, shadows and EPT are policy in vmm/mmu/).

On a miss QEMU restores the CPU state to the faulting instruction (EIP points at it) and calls
the fill hook with the linear page address and the access (read, write, fetch), but not the MMU
index: the handler reads the CPL itself. The handler answers a grant (physical page, UC_PROT_*
bits) or refuses; a refusal ends the run with UC_ERR_EXCEPTION, the full linear address in
``uc->invalid_addr`` (located here by probing, and verified, as emu/qemu_state.py locates QEMU's
state). Entries granted without execute permission let stores skip QEMU's notdirty slow path.

A #PF does not end the run. A refusal leaves the fill by QEMU's cpu_loop_exit (a longjmp back to
the execution loop), and that loop delivers any pending exception before it looks at why it was
left: so the handler that refuses with ``raise_page_fault`` also sets CPUState.exception_index to
EXCP0E_PAGE and env->error_code, exactly as QEMU's own x86 MMU does before raising it. Unicorn
then calls the interrupt hook with vector 14 as for a #DE; ``page_fault_taken`` (called there)
sets CR2 to the full address and clears ``uc->invalid_error``, so the refusal is no longer an
error and Unicorn's loop re-enters the CPU in the same run.
"""
from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

from unicorn import (
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_EXCEPTION,
    UC_HOOK_INTR,
    UC_HOOK_TLB_FILL,
    UC_MEM_FETCH,
    UC_MEM_READ,
    UC_MEM_WRITE,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    UC_TLB_VIRTUAL,
    Uc,
)
from unicorn.unicorn_py3.unicorn import uclib

from emu.qemu_state import NO_UNTIL, CpuError

FILL_READ, FILL_WRITE, FILL_FETCH = UC_MEM_READ, UC_MEM_WRITE, UC_MEM_FETCH
PROT_R, PROT_W, PROT_X = UC_PROT_READ, UC_PROT_WRITE, UC_PROT_EXEC
PROT_ALL = PROT_R | PROT_W | PROT_X

_FILL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                            ctypes.c_void_p, ctypes.c_void_p)
PROBE_ADDRESSES = (0x5A5A3F17, 0x2C6D1B3D)  # fetches the probe refuses (odd page offsets)
PROBE_FAULT = 0x3C3C2E51  # the fetch the page-fault probe refuses with a #PF
UC_STRUCT_WINDOW = 16384  # uc->invalid_addr lies in the first bytes of uc_struct
EXCP0E_PAGE = 14          # QEMU's exception index of #PF
INVALID_ERROR = 8         # uc->invalid_error follows uc->invalid_addr (uc_priv.h)

Fill = Callable[[int, int], "tuple[int, int] | None"]
# Unicorn looks up the code page of its exits (and of exit - 1) after every run and when blocks
# are dropped (uc.c's exit bookkeeping, ctl_remove_cache): a fetch fill that is no guest fetch.
# Refused, it would end the run with a #PF the guest never caused (an exit on a page the current
# page tables do not map: xv6's boot-sector sites once its kernel runs). It is answered with this
# placeholder, which Cpu.run flushes before the guest runs again.
EXIT_LOOKUP_GRANT = (0, UC_PROT_READ | UC_PROT_EXEC)


class TlbEntry(ctypes.Structure):
    """Unicorn's uc_tlb_entry: the grant a fill hook writes."""
    _fields_ = [("paddr", ctypes.c_uint64), ("perms", ctypes.c_int)]


class VirtualTlb:
    """UC_TLB_VIRTUAL with one fill handler: ``fill(linear_page, FILL_*) -> (physical_page,
    PROT_*) or None`` (refused; after ``raise_page_fault``, a #PF the guest takes in the same
    run). A handler that raises hands the exception to ``failed``. ``state`` is the CPU's
    QemuState (exception fields, control registers)."""

    def __init__(self, uc: Uc, add_hook: Callable, failed: Callable[[BaseException], None],
                 state, exit_lookup: Callable[[int], bool] = lambda page: False):
        self._uch = uc._uch
        self._failed = failed
        self._fill: Fill = lambda page, access: None
        self._exit_lookup = exit_lookup
        self._state = state
        self.stale = False      # a placeholder grant for an exit lookup may be cached
        self.fault_pending = False  # a refusal raised #PF; the interrupt hook has not run yet
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        add_hook(UC_HOOK_TLB_FILL, _FILL_CB(self._fill_cb))
        self._invalid_addr = self._locate_invalid_addr()
        self._invalid_error = ctypes.c_int32.from_address(
            ctypes.addressof(self._invalid_addr) + INVALID_ERROR)
        self._verify_page_fault(uc)

    def set_fill(self, fill: Fill) -> None:
        """Make ``fill`` the MMU; the cached translations of the previous one are dropped."""
        self._fill = fill
        self.flush()

    def _fill_cb(self, _uc, page, access, entry, _ud):
        try:
            page &= 0xFFFFFFFF
            if access == FILL_FETCH and self._exit_lookup(page):
                grant = EXIT_LOOKUP_GRANT
                self.stale = True
            else:
                grant = self._fill(page, access)
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return False
        if grant is None:
            return False
        tlb_entry = TlbEntry.from_address(entry)
        tlb_entry.paddr, tlb_entry.perms = grant
        return True

    def raise_page_fault(self, error_code: int) -> None:
        """Make the refusal of the fill in progress a #PF with this error code (x86's
        handle_mmu_fault: env->error_code, exception_index = EXCP0E_PAGE, no INT n)."""
        state = self._state
        state.error_code.value = error_code
        state.is_int.value = 0
        state.old_exception.value = -1
        state.exception_index.value = EXCP0E_PAGE
        self.fault_pending = True

    def page_fault_taken(self) -> None:
        """In the interrupt hook of a raised #PF: CR2 is the full address the refused access
        made, and the refusal no longer ends the run."""
        self.fault_pending = False
        self._state.cr[2] = self._invalid_addr.value & 0xFFFFFFFF
        self._invalid_error.value = 0

    def refused_address(self) -> int:
        """The full linear address of the access whose fill was refused last."""
        return self._invalid_addr.value & 0xFFFFFFFF

    def flush(self) -> None:
        """Drop every cached linear-to-physical translation (every MMU index)."""
        self.stale = False
        uclib.uc_ctl(self._uch, UC_CTL_TLB_FLUSH | (UC_CTL_IO_WRITE << 30))

    def _locate_invalid_addr(self) -> ctypes.c_uint64:
        """Refuse instruction fetches at two known addresses and find the field holding them."""
        uc_struct = self._uch.value
        offsets = None
        for address in PROBE_ADDRESSES:
            if uclib.uc_emu_start(self._uch, address, NO_UNTIL, 0, 1) != UC_ERR_EXCEPTION:
                raise CpuError("a refused TLB fill did not end the run; this CPU model cannot run")
            window = ctypes.string_at(uc_struct, UC_STRUCT_WINDOW)
            found = {off for off in range(0, UC_STRUCT_WINDOW, 8)
                     if struct.unpack_from("<Q", window, off)[0] == address}
            offsets = found if offsets is None else offsets & found
        if not offsets or len(offsets) != 1:
            raise CpuError("cannot locate Unicorn's invalid_addr; this CPU model cannot run")
        return ctypes.c_uint64.from_address(uc_struct + offsets.pop())

    def _verify_page_fault(self, uc: Uc) -> None:
        """Refuse a fetch with a #PF: the interrupt hook must see vector 14 with the refusal
        recorded in uc->invalid_error, and clearing it must leave the run without an error."""
        seen = []

        def intr(_uc, intno, _ud):
            seen.append((intno, self._invalid_error.value, self._invalid_addr.value))
            self.page_fault_taken()
            uclib.uc_emu_stop(self._uch)
        probe_fill, self._fill = self._fill, lambda page, access: self.raise_page_fault(0x10)
        cr2 = self._state.cr[2]
        handle = uc.hook_add(UC_HOOK_INTR, intr)
        try:
            err = uclib.uc_emu_start(self._uch, PROBE_FAULT, NO_UNTIL, 0, 1)
        finally:
            uc.hook_del(handle)
            self._fill = probe_fill
            self._state.cr[2] = cr2
        if err or seen != [(EXCP0E_PAGE, UC_ERR_EXCEPTION, PROBE_FAULT)]:
            raise CpuError("a #PF raised by a TLB fill does not reach the interrupt hook as "
                           "QEMU's own would; this CPU model cannot run")

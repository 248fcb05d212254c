"""The CPU's event wiring: raw ctypes Unicorn hooks dispatched to the CpuHandler an engine attaches,
the translation and memory watches, MMIO windows, and Unicorn's exits (addresses the CPU stops
in front of).

Hooks are raw ctypes callbacks installed once, with the handler's bound methods cached: they are
the exit hot path, and Unicorn's own hook wrappers cost several times more per call.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Protocol

from unicorn import Uc, UcError
from unicorn import (UC_HOOK_CODE, UC_HOOK_EDGE_GENERATED, UC_HOOK_INTR, UC_HOOK_MEM_READ,
                     UC_HOOK_MEM_WRITE, UC_MEM_WRITE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib


_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                          ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                           ctypes.c_void_p)
_BOOL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_MEM_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                           ctypes.c_int64, ctypes.c_void_p)
_EDGE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p)
_CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                            ctypes.c_void_p)

_MMIO_READ_CB = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                                 ctypes.c_void_p)
_MMIO_WRITE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                                  ctypes.c_uint64, ctypes.c_void_p)


class TranslationBlock(ctypes.Structure):
    """Unicorn's uc_tb: a newly translated block (linear start, instruction count, byte size)."""
    _fields_ = [("pc", ctypes.c_uint64), ("icount", ctypes.c_uint16), ("size", ctypes.c_uint16)]


class CpuHandler(Protocol):
    """What an engine attaches to the CPU; every method runs inside a Unicorn hook."""

    def on_interrupt(self, intno: int) -> None: ...
    def on_in(self, port: int, size: int) -> int: ...
    def on_out(self, port: int, size: int, value: int) -> None: ...
    def on_cpuid(self) -> bool: ...
    def on_invalid_opcode(self) -> bool: ...
    def on_mmio_read(self, address: int, size: int) -> int: ...
    def on_mmio_write(self, address: int, size: int, value: int) -> None: ...


class Hooks:
    """Every hook of one Unicorn instance. A Python exception cannot cross into C: a callback that
    raises hands the exception to ``failed`` (which stops the CPU) and returns a neutral value."""

    def __init__(self, uc: Uc, failed: Callable[[BaseException], None],
                 stop_after_access: Callable[[], None]):
        """``stop_after_access()`` is called after a device access (IN/OUT, MMIO) during which
        a stop was requested (``in_access`` / ``stop_deferred``: see Cpu.stop)."""
        self._uc = uc
        self._uch = uc._uch
        self._failed = failed
        self._stop_after_access = stop_after_access
        self.in_access = False
        self.stop_deferred = False
        self.handler: CpuHandler | None = None
        self._on_interrupt: Callable[[int], None] = lambda intno: None  # until attach()
        self._callbacks: list = []
        self._exits: dict[str, frozenset[int]] = {}
        self.exit_pages: frozenset[int] = frozenset()   # pages of every exit and of exit - 1
        self._code_hooks: dict[int, object] = {}
        self._pc_value = ctypes.c_uint32()
        self._pc_ref = ctypes.byref(self._pc_value)
        self._translation_callbacks: list[Callable[[int, int], None]] = []
        self.before_exception: Callable[[], None] = lambda: None
        self.add_hook(UC_HOOK_INTR, _INTR_CB(self._intr_cb))
        self.add_hook(UC_HOOK_INSN, _IN_CB(self._in_cb), insn=X.UC_X86_INS_IN)
        self.add_hook(UC_HOOK_INSN, _OUT_CB(self._out_cb), insn=X.UC_X86_INS_OUT)
        self.add_hook(UC_HOOK_INSN, _BOOL_CB(self._cpuid_cb), insn=X.UC_X86_INS_CPUID)
        self.add_hook(UC_HOOK_INSN_INVALID, _BOOL_CB(self._invalid_cb))
        # Exits mode, with no exits: Unicorn ignores `until`, and no longer ends every run by
        # looking up the code page of until-1 (with guest paging on, that lookup page-faults
        # behind our back: CR2 = 0xffffffff and a pending #PF that turns the next fault to #DF).
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])

    def attach(self, handler: CpuHandler) -> None:
        """Route every hook to ``handler`` (bound methods cached: hooks are the exit hot path)."""
        self.handler = handler
        self._on_interrupt = handler.on_interrupt
        self._on_in = handler.on_in
        self._on_out = handler.on_out

    # ----- the handler's hooks ------------------------------------------------------------------
    def _intr_cb(self, _uc, intno, _ud):
        try:
            self.before_exception()
            self._on_interrupt(intno)
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)

    def _in_cb(self, _uc, port, size, _ud):
        self.in_access = True
        try:
            return self._on_in(port, size)
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return 0
        finally:
            self._leave_access()

    def _out_cb(self, _uc, port, size, value, _ud):
        self.in_access = True
        try:
            self._on_out(port, size, value)
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
        finally:
            self._leave_access()

    def _leave_access(self) -> None:
        self.in_access = False
        if self.stop_deferred:
            self.stop_deferred = False
            self._stop_after_access()

    def _cpuid_cb(self, _uc, _ud):
        try:
            return self.handler.on_cpuid()
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return False

    def _invalid_cb(self, _uc, _ud):
        try:
            return self.handler.on_invalid_opcode()
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)
            return False

    # ----- MMIO ---------------------------------------------------------------------------------
    def map_mmio(self, base: int, size: int, admit: Callable[[], bool]) -> None:
        """Back guest-physical [base, base + size) (page aligned) with callbacks to the handler's
        on_mmio_read/on_mmio_write (with the guest-physical address). ``admit()`` runs first and
        may refuse the access (False: the CPU is leaving, and the access will run again)."""
        def read(_uc, offset, size_, _ud):
            if not admit():
                return 0
            self.in_access = True
            try:
                return self.handler.on_mmio_read(base + offset, size_)
            except BaseException as exc:  # noqa: BLE001
                self._failed(exc)
                return 0
            finally:
                self._leave_access()

        def write(_uc, offset, size_, value, _ud):
            if not admit():
                return
            self.in_access = True
            try:
                self.handler.on_mmio_write(base + offset, size_, value)
            except BaseException as exc:  # noqa: BLE001
                self._failed(exc)
            finally:
                self._leave_access()
        callbacks = (_MMIO_READ_CB(read), _MMIO_WRITE_CB(write))
        err = uclib.uc_mmio_map(self._uch, ctypes.c_uint64(base), ctypes.c_size_t(size),
                                callbacks[0], None, callbacks[1], None)
        if err:
            raise UcError(err)
        self._callbacks.extend(callbacks)

    # ----- exits --------------------------------------------------------------------------------
    def set_exits(self, linear_addresses, owner: str) -> None:
        """Stop before executing any of these linear addresses (Unicorn's exits). Each owner (the
        debugger's breakpoints, an engine's translated sites) keeps its own set; the CPU stops at
        their union. Unicorn checks exits when it translates a block, so the blocks holding a new
        exit are invalidated (it only re-translates those at exit-1 after each run by itself)."""
        before = set().union(*self._exits.values())
        self._exits[owner] = frozenset(linear_addresses)
        after = set().union(*self._exits.values())
        if after == before:
            return
        self.exit_pages = frozenset(page for address in after
                                    for page in (address & ~0xFFF, (address - 1) & ~0xFFF))
        self._uc.ctl_set_exits(sorted(after))
        for address in after ^ before:
            self._uc.ctl_remove_cache(address, address + 1)

    # ----- instruction callouts -----------------------------------------------------------------
    def hook_code_at(self, linear: int, callback: Callable[[int], int | None]) -> int:
        """Call ``callback(linear)`` just before the instruction at this linear address runs
        (UC_HOOK_CODE bounded to that one address); return the handle for unhook_code(). A
        callback that carried the instruction out returns the EIP to go on at: Unicorn leaves
        the block and resumes there within the same run, and the instruction itself never runs.
        None lets the instruction run.

        The write is uc_reg_write: it sets Unicorn's skip_sync_pc_on_exit, and the exit check
        QEMU places right after a code hook leaves the block keeping that EIP and clears the flag
        again, so later hooks of the run see true EIPs (bug 2 of the notes needs the flag left
        set). uc_reg_write_batch leaves the flag clear, and that exit puts EIP back on the
        hooked instruction (measured: the hook fires again forever).

        Cost: QEMU calls the code-hook helper before every instruction of a counted run anyway
        (Unicorn's instruction counter is a code hook), and that helper walks every code hook's
        bounds, so each hook adds a few ns to every counted instruction: keep them few."""
        def code_cb(_uc, address, _size, _ud):
            try:
                eip = callback(address & 0xFFFFFFFF)
                if eip is not None:
                    self._pc_value.value = eip
                    uclib.uc_reg_write(self._uch, X.UC_X86_REG_EIP, self._pc_ref)
            except BaseException as exc:  # noqa: BLE001
                self._failed(exc)
        cfunc = _CODE_CB(code_cb)
        handle = self.add_hook(UC_HOOK_CODE, cfunc, linear, linear)
        self._code_hooks[handle] = cfunc
        self._uc.ctl_remove_cache(linear, linear + 1)  # a block translated uncounted lacks the call
        return handle

    def unhook_code(self, handle: int) -> None:
        uclib.uc_hook_del(self._uch, handle)
        self._callbacks.remove(self._code_hooks.pop(handle))

    # ----- watches ------------------------------------------------------------------------------
    def watch_translations(self, callback, run_one_block: Callable[[], None]) -> None:
        """Call ``callback(linear, size)`` for every block Unicorn translates, before it first
        runs (UC_HOOK_EDGE_GENERATED: at translation time, never per execution); several
        watchers are called in the order they came. Unicorn reports a new block only once some
        block has run to its end (one ended by HLT or a fault does not count): for the first
        watcher ``run_one_block`` makes that happen. Every translated block is then flushed, so
        that every block passes through the new watcher."""
        if not self._translation_callbacks:
            self.add_hook(UC_HOOK_EDGE_GENERATED, _EDGE_CB(self._edge_cb))
            run_one_block()
        self._translation_callbacks.append(callback)
        self._uc.ctl_flush_tb()

    def _edge_cb(self, _uc, current, _previous, _ud):
        try:
            block = TranslationBlock.from_address(current)
            linear = block.pc & 0xFFFFFFFF
            for callback in self._translation_callbacks:
                callback(linear, block.size)
        except BaseException as exc:  # noqa: BLE001
            self._failed(exc)

    def invalidate(self, start: int, end: int) -> None:
        """Drop the translated blocks holding code in linear [start, end)."""
        self._uc.ctl_remove_cache(start, end)

    def watch_memory(self, start: int, end: int, callback, reads: bool, writes: bool) -> int:
        """Call ``callback(address, size, is_write)`` before guest loads and/or stores to
        physical [start, end]; return the handle for unhook(). A memory hook slows every load or
        store: debugging only."""
        htype = (UC_HOOK_MEM_READ if reads else 0) | (UC_HOOK_MEM_WRITE if writes else 0)
        handle = self.add_hook(htype, _MEM_CB(self._make_memory_cb(callback)), start, end)
        self._uc.ctl_flush_tb()
        return handle

    def _make_memory_cb(self, callback):
        def memory_cb(_uc, access, address, size, _value, _ud):
            try:
                callback(address, size, access == UC_MEM_WRITE)
            except BaseException as exc:  # noqa: BLE001
                self._failed(exc)
        return memory_cb

    def unhook(self, handle: int) -> None:
        uclib.uc_hook_del(self._uch, handle)

    def add_hook(self, htype: int, cfunc, begin: int = 1, end: int = 0, insn: int | None = None) -> int:
        handle = ctypes.c_size_t()
        args = [] if insn is None else [ctypes.c_int(insn)]
        err = uclib.uc_hook_add(self._uch, ctypes.byref(handle), htype,
                                ctypes.cast(cfunc, ctypes.c_void_p), None,
                                ctypes.c_uint64(begin), ctypes.c_uint64(end), *args)
        if err:
            raise UcError(err)
        self._callbacks.append(cfunc)
        return handle.value

    def close(self) -> None:
        """Drop the Unicorn instance before the callbacks it could still call."""
        self._uc = None
        self._callbacks.clear()

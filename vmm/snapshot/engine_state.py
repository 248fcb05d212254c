"""An engine's own state in a snapshot, and which engine may continue a snapshot taken under
another.

The real CPU state (CPUX86State) is the same for every engine; what differs is where the guest's
privileged state lives. native and vtx run the guest kernel at real CPL 0 with its own CR0/CR3,
GDT, IDT and IF in the CPU: either continues the other's snapshot. trap and bt deprivilege it
(ring 0 on real ring 1, real mode in virtual-8086 mode) and keep the guest's view in shadow state
(``GuestState``, the debug registers): either continues the other's, with the virtual IF moved
between the shadow (trap) and the real IF (bt, in protected mode). Between the two families the
guest's code segments, IF and IOPL would have to be re-privileged or deprivileged in flight, which
is refused with a message.

Scanner sites (bt callouts, vtx/native stops, trap's audit) are saved with their bytes and hit
counts and decoded again on restore, so reports and fidelity audits cover the whole run.
"""
from __future__ import annotations

from dataclasses import fields

from emu.cpu import FLAG_IF, IOPL_MASK
from vmm.engines.scanner import Site, SiteKind
from vmm.snapshot.state import capture, restore
from vmm.vmcs import ActivityState, GuestState, SegmentRegister, TableRegister

FAMILY = {"native": "real", "vtx": "real", "trap": "deprivileged", "bt": "deprivileged"}
SCANNER_STATE = ("pages", "blocks", "invalidated", "rewritten", "_scanned", "_window_held")
GUEST_FIELDS = ("cr0", "cr2", "cr3", "cr4", "interrupt_flag", "iopl", "sti_blocking")
OPSIZE_PREFIX = 0x66


class EngineMismatch(ValueError):
    """The snapshot's guest state cannot be continued by the engine asked for."""


def check_engine(saved: str, wanted: str) -> None:
    if FAMILY[saved] != FAMILY[wanted]:
        raise EngineMismatch(
            f"a snapshot taken under {saved} cannot continue under {wanted}: {saved} keeps the "
            f"guest kernel {'at real CPL 0' if FAMILY[saved] == 'real' else 'deprivileged'}, "
            f"{wanted} {'at real CPL 0' if FAMILY[wanted] == 'real' else 'deprivileged'} "
            "(native <-> vtx and trap <-> bt carry over)")


def save_engine(engine) -> dict:
    state = {"name": engine.name, "scanner": _save_scanner(engine.scanner)}
    guest = getattr(engine, "deprivileged", None)
    if guest is not None:
        guest.view.flags()  # bt: bring the shadow IF up to date with the real (virtual) IF
        state["guest"] = _save_guest_state(guest.state)
        state["debug_regs"] = list(guest.debug_regs)
    if getattr(engine, "_window_held", None) is not None:
        state["window_held"] = engine._window_held
    if getattr(engine, "controls", None) is not None:
        state["controls"] = capture(engine.controls, _control_fields(engine.controls))
    return state


def _control_fields(controls) -> tuple[str, ...]:
    """Every VMCS control, the CR read shadows the guest's MOV CR keep up to date among them."""
    return tuple(f.name for f in fields(controls))


def load_engine(engine, state: dict) -> None:
    check_engine(state["name"], engine.name)
    guest = getattr(engine, "deprivileged", None)
    if guest is not None:
        _load_guest_state(guest.state, state["guest"])
        guest.debug_regs = list(state["debug_regs"])
        _place_virtual_if(engine, guest)
    _load_controls(engine, state)
    _load_scanner(engine.scanner, engine.disasm, state["scanner"])
    if hasattr(engine, "_window_held"):
        engine._window_held = state.get("window_held", False)


def _load_controls(engine, state: dict) -> None:
    """vtx from vtx: the saved controls, read shadows included (native has none: the run's
    --exit-on stands)."""
    if getattr(engine, "controls", None) is not None and "controls" in state:
        restore(engine.controls, state["controls"], _control_fields(engine.controls))


def _place_virtual_if(engine, guest) -> None:
    """In protected mode bt keeps the virtual IF in the real IF (and the real IOPL at 1 in the
    kernel), trap keeps the real IF at 1 and IOPL 0: put it where this engine expects it."""
    if not guest.protected:
        return
    cpu = guest.cpu
    if engine.name == "bt":
        cpu.set_system_flags(FLAG_IF if guest.state.interrupt_flag else 0, FLAG_IF)
        guest.view.sync_iopl()
    else:
        cpu.set_system_flags(FLAG_IF, IOPL_MASK)


def _save_guest_state(state: GuestState) -> dict:
    saved = capture(state, GUEST_FIELDS)
    saved.update(gdtr=[state.gdtr.base, state.gdtr.limit],
                 idtr=[state.idtr.base, state.idtr.limit],
                 ldtr=_segment(state.ldtr), tr=_segment(state.tr), activity=int(state.activity))
    return saved


def _segment(seg: SegmentRegister) -> list[int]:
    return [seg.selector, seg.base, seg.limit, seg.type]


def _load_guest_state(state: GuestState, saved: dict) -> None:
    restore(state, saved, GUEST_FIELDS)
    state.gdtr, state.idtr = TableRegister(*saved["gdtr"]), TableRegister(*saved["idtr"])
    state.ldtr, state.tr = SegmentRegister(*saved["ldtr"]), SegmentRegister(*saved["tr"])
    state.activity = ActivityState(saved["activity"])


def _save_scanner(scanner) -> dict:
    saved = capture(scanner, SCANNER_STATE)
    saved["sites"] = [[s.linear, s.insn.address, _bits(s.insn), s.raw, s.kind.value, s.hits]
                      for s in scanner.sites.values()]
    return saved


def _bits(insn) -> int:
    """The code size the instruction was decoded for (its operand size, undone by 0x66)."""
    if OPSIZE_PREFIX in insn.prefixes:
        return 16 if insn.opsize == 32 else 32
    return insn.opsize


def _load_scanner(scanner, disasm, saved: dict) -> None:
    """The sites this engine's scanner would have made (another engine's are left for the
    re-translation to find), armed as the saved ones were."""
    restore(scanner, saved, SCANNER_STATE)
    scanner.sites.clear()
    for linear, address, bits, raw, kind, hits in saved["sites"]:
        insn = disasm.decode(raw, address, bits)
        if insn is None:
            raise ValueError(f"a saved scanner site at {linear:#x} does not decode")
        if scanner.classify(insn) is SiteKind(kind):
            scanner.sites[linear] = Site(linear, insn, SiteKind(kind), hits)
    scanner._armed = frozenset()
    scanner.arm()

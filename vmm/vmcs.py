"""VM-exit reasons, exit records and a VMCS-like guest-state area (Intel SDM Vol. 3, ch. 25-28).

``ExitReason`` carries the basic exit-reason numbers of SDM Appendix C. A ``VmExit`` is one exit
with typed data, its SDM exit qualification and timestamps. ``Vmcs`` holds what the VMM keeps for
a guest while its real CPU runs something else: the guest-state area and its shadowed registers.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ExitReason(enum.IntEnum):
    """Basic exit reasons, numbered as in Intel SDM Vol. 3, Appendix C."""
    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI = 4
    IO_SMI = 5
    OTHER_SMI = 6
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    GETSEC = 11
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    RSM = 17
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    MSR_READ = 31
    MSR_WRITE = 32
    INVALID_GUEST_STATE = 33
    MSR_LOADING = 34
    MWAIT_INSTRUCTION = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR_INSTRUCTION = 39
    PAUSE_INSTRUCTION = 40
    MCE_DURING_VMENTRY = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    VIRTUALIZED_EOI = 45
    GDTR_IDTR_ACCESS = 46
    LDTR_TR_ACCESS = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    # Not an SDM reason: a binary-translation callout (VMware's term) for a sensitive instruction
    # that VT-x would not exit on. The SDM never uses basic reason 0xFFFF.
    BT_CALLOUT = 0xFFFF


def io_qualification(port: int, size: int, is_in: bool, string: bool = False, rep: bool = False,
                     immediate: bool = False) -> int:
    """Exit qualification for I/O instructions (SDM Table 28-5)."""
    return ((size - 1) | (is_in << 3) | (string << 4) | (rep << 5) | (immediate << 6)
            | (port << 16))


EPT_READ, EPT_WRITE, EPT_FETCH, EPT_LINEAR_VALID, EPT_TRANSLATED = 1, 2, 4, 1 << 7, 1 << 8


def ept_qualification(write: bool = False, fetch: bool = False) -> int:
    """Exit qualification for EPT violations (SDM Table 28-7): the access (bits 0-2) and bit 8,
    the access was to a translated guest-linear address (paging off: the address itself)."""
    return (EPT_WRITE if write else EPT_FETCH if fetch else EPT_READ) | EPT_TRANSLATED


CR_MOV_TO, CR_MOV_FROM, CR_CLTS, CR_LMSW = range(4)


def cr_qualification(cr: int, access: int, gpr: int = 0, lmsw_source: int = 0) -> int:
    """Exit qualification for control-register accesses (SDM Table 28-3)."""
    return cr | (access << 4) | (gpr << 8) | (lmsw_source << 16)


def interruption_info(vector: int, kind: int, error_code_valid: bool) -> int:
    """VM-exit interruption information (SDM Table 25-19): vector, type, error-code valid, valid."""
    return vector | (kind << 8) | (error_code_valid << 11) | (1 << 31)


class VmExit:
    """One VM exit: why, where, the SDM qualification, typed data and timestamps (ns).

    Engines fill what the handler needs; what only an observer reads (the I/O qualification's
    string/REP/immediate bits, the instruction's bytes and text in ``insn_bytes``/``detail``, the
    timestamps) is filled in by the exit path only when someone observes, as KVM reads
    EXIT_QUALIFICATION lazily. Fields left at their class default cost nothing on the hot
    path."""

    qualification: int | None = 0      # None: not read yet (I/O, unobserved)
    exit_ns = 0
    entry_ns = 0
    port: int | None = None            # IO_INSTRUCTION
    size: int | None = None
    is_in = False
    value: int | None = None           # I/O data (OUT: written; IN: the handler's answer)
    guest_physical: int | None = None  # EPT_VIOLATION: the guest-physical-address field
    intr_info: int | None = None       # EXCEPTION_NMI: VM-exit interruption information
    error_code: int | None = None
    insn = None                        # the decoded instruction (emu.disasm.Insn), if decoded
    plan = None                        # how the engine carries it out (trap/bt emulation plan)
    hidden_fault = False               # EXCEPTION_NMI #PF on a shadow entry the VMM fills itself
    insn_bytes = b""
    detail = ""

    def __init__(self, reason: ExitReason, rip: int, qualification: int | None = 0):
        self.reason = reason
        self.rip = rip
        self.qualification = qualification

    @property
    def insn_len(self) -> int:
        if self.insn_bytes or self.insn is None:
            return len(self.insn_bytes)
        return self.insn.size

    @property
    def duration_ns(self) -> int:
        return max(self.entry_ns - self.exit_ns, 0)

    def describe(self) -> str:
        if self.qualification is None:
            direction = "in" if self.is_in else "out"
            text = f"{self.reason.name} rip={self.rip:#010x} {direction} port {self.port:#x}"
        else:
            text = f"{self.reason.name} rip={self.rip:#010x} qual={self.qualification:#x}"
        if self.detail or self.insn is not None:
            text += f" {self.detail or self.insn}"
        return text

    def to_json(self) -> dict:
        record = {"reason": self.reason.name, "reason_number": int(self.reason),
                  "rip": self.rip, "qualification": self.qualification,
                  "insn_len": self.insn_len, "insn_bytes": self.insn_bytes.hex(),
                  "exit_ns": self.exit_ns, "entry_ns": self.entry_ns}
        for name in ("port", "size", "value", "guest_physical", "intr_info", "error_code"):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        if self.port is not None:
            record["direction"] = "in" if self.is_in else "out"
        if self.detail:
            record["detail"] = self.detail
        return record


class ActivityState(enum.IntEnum):
    """Guest activity state (SDM 25.4.2)."""
    ACTIVE = 0
    HLT = 1
    SHUTDOWN = 2


@dataclass
class TableRegister:
    base: int = 0
    limit: int = 0xFFFF


@dataclass
class SegmentRegister:
    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = 0


@dataclass
class GuestState:
    """The guest-state area: what the guest believes its privileged registers hold."""
    cr0: int = 0x10
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    gdtr: TableRegister = field(default_factory=TableRegister)
    idtr: TableRegister = field(default_factory=lambda: TableRegister(0, 0x3FF))
    ldtr: SegmentRegister = field(default_factory=SegmentRegister)
    tr: SegmentRegister = field(default_factory=SegmentRegister)
    interrupt_flag: bool = False
    iopl: int = 0
    activity: ActivityState = ActivityState.ACTIVE
    sti_blocking: bool = False


@dataclass
class Vmcs:
    """A VMCS-like control block: guest state plus the last exit's information fields."""
    guest: GuestState = field(default_factory=GuestState)
    exit_reason: ExitReason | None = None
    exit_qualification: int = 0
    exit_instruction_length: int = 0

"""The i386 register layout gdb sees through the stub: the target description (GDB manual,
"i386 Features": org.gnu.gdb.i386.core) and the `g`/`p` packet encodings of the guest's registers.

The core feature lists the eight general registers, EIP, EFLAGS, the six segment selectors and
the x87 state gdb requires there; the guest's x87 state is not modelled and reads as zeros. A
trapvisor feature adds the guest-visible control registers CR0, CR2, CR3 and CR4 (group "system").
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    group: str = ""
    guest: bool = True  # backed by Debuggee.registers(); False: reported as zeros

    @property
    def size(self) -> int:
        return self.bits // 8


GENERAL = [Register(name, 32, "data_ptr" if name in ("esp", "ebp") else "int32")
           for name in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")]
CONTROL_FLOW = [Register("eip", 32, "code_ptr"), Register("eflags", 32, "i386_eflags")]
SEGMENTS = [Register(name, 32, "int32") for name in ("cs", "ss", "ds", "es", "fs", "gs")]
X87 = ([Register(f"st{i}", 80, "i387_ext", guest=False) for i in range(8)]
       + [Register(name, 32, "int", "float", guest=False)
          for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")])
SYSTEM = [Register(name, 32, "int32", "system") for name in ("cr0", "cr2", "cr3", "cr4")]

CORE = GENERAL + CONTROL_FLOW + SEGMENTS + X87
REGISTERS = CORE + SYSTEM

EFLAGS_BITS = ((0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"),
               (9, "IF"), (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"),
               (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"))


def _reg_xml(reg: Register, regnum: int) -> str:
    group = f' group="{reg.group}"' if reg.group else ""
    return f'    <reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" regnum="{regnum}"{group}/>'


def _eflags_xml() -> list[str]:
    fields = [f'      <field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in EFLAGS_BITS]
    return ['    <flags id="i386_eflags" size="4">', *fields, "    </flags>"]


def target_xml() -> str:
    """The target description gdb reads with qXfer:features:read:target.xml."""
    core = [_reg_xml(reg, n) for n, reg in enumerate(CORE)]
    system = [_reg_xml(reg, len(CORE) + n) for n, reg in enumerate(SYSTEM)]
    return "\n".join([
        '<?xml version="1.0"?>',
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
        "<target>",
        "  <architecture>i386</architecture>",
        '  <feature name="org.gnu.gdb.i386.core">', *_eflags_xml(), *core, "  </feature>",
        '  <feature name="org.trapvisor.i386.system">', *system, "  </feature>",
        "</target>", ""])


TARGET_XML = target_xml()


def encode(reg: Register, values: dict[str, int]) -> str:
    """One register as gdb's `p` reply: target byte order (little-endian), two hex digits a byte."""
    value = values.get(reg.name, 0) if reg.guest else 0
    return (value & ((1 << reg.bits) - 1)).to_bytes(reg.size, "little").hex()


def encode_all(values: dict[str, int]) -> str:
    """The `g` reply: every register of the description, in its order."""
    return "".join(encode(reg, values) for reg in REGISTERS)


def decode(reg: Register, text: str) -> int:
    data = bytes.fromhex(text)
    if len(data) != reg.size:
        raise ValueError(f"{reg.name} takes {reg.size} bytes, got {len(data)}")
    return int.from_bytes(data, "little")


def decode_all(text: str) -> dict[str, int]:
    """A `G` packet's payload -> {name: value} for the registers the guest has (x87 dropped).

    gdb may send only a prefix of the registers; the missing ones are left out."""
    values, offset = {}, 0
    for reg in REGISTERS:
        chunk = text[offset:offset + 2 * reg.size]
        if len(chunk) < 2 * reg.size:
            break
        if reg.guest:
            values[reg.name] = decode(reg, chunk)
        offset += 2 * reg.size
    return values

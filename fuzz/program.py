"""Fuzz cases as guest images: a structured program (the runtime of fuzz/runtime.asm, booting to
protected mode with a recording IDT, then a body of generated ops, each followed by a checkpoint)
or raw random bytes loaded as a boot sector. A case is rebuilt from its seed alone.
"""
from __future__ import annotations

import functools
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from emu.asm import assemble, assemble_file
from fuzz.link import Linker, Unlinkable
from fuzz.ops import Op, random_op

RUNTIME = Path(__file__).resolve().parent / "runtime.asm"
BOOT_ADDRESS = 0x7C00
RUNTIME_SYMBOLS = ("BODY", "SCRATCH", "IDT_BASE", "CURRENT_OP", "RECOVERY", "RECOVERY_ESP",
                   "checkpoint", "finish", "gdt_descriptor", "idt_descriptor")
MAX_OPS = 255            # the op index is one byte in the records
# The assembler's keystone and capstone handles are shared and not thread-safe (a campaign's
# --jobs threads building cases at once crashed the process): one assembly at a time.
ASSEMBLER = threading.RLock()
OP_MARKER = re.compile(r"\s+; op: (\w+)$")
OP_END = re.compile(r"op_\d+_end:$")


@functools.cache
def runtime() -> tuple[bytes, dict[str, int]]:
    with ASSEMBLER:
        image = assemble_file(RUNTIME)
    assert image.origin == BOOT_ADDRESS
    return image.code, image.symbols


def record_log() -> tuple[int, int]:
    """Where a logged image keeps its records: (RECORD_LOG, the address of LOG_LENGTH)."""
    symbols = runtime()[1]
    return symbols["RECORD_LOG"], symbols["LOG_LENGTH"]


@functools.cache
def linker() -> Linker:
    return Linker(runtime_header(), runtime()[1]["BODY"])


def runtime_header() -> list[str]:
    """The runtime's symbols as the body names them."""
    symbols = runtime()[1]
    return [f"{name} equ {symbols[name]:#x}" for name in RUNTIME_SYMBOLS]


@dataclass(frozen=True)
class StructuredCase:
    """Generated ops between the runtime's boot and its final record."""
    seed: int
    ops: tuple[Op, ...]

    kind = "structured"

    @classmethod
    def generate(cls, seed: int, length: int) -> "StructuredCase":
        rng = random.Random(seed)
        return cls(seed, tuple(random_op(rng) for _ in range(min(length, MAX_OPS))))

    def with_ops(self, ops) -> "StructuredCase":
        return StructuredCase(self.seed, tuple(ops))

    def body_lines(self) -> list[str]:
        """The ops, each under its own label and followed by a checkpoint; they name the
        runtime's symbols (fuzz/runtime.asm) as it does."""
        lines = []
        for index, op in enumerate(self.ops):
            lines += [f"op_{index}:",
                      f"    mov dword [ss:CURRENT_OP], {index}",
                      f"    mov dword [ss:RECOVERY], op_{index}_end",
                      "    mov [ss:RECOVERY_ESP], esp",
                      f"    ; op: {op.kind}",
                      *(line if line.endswith(":") else f"    {line}" for line in op.lines()),
                      f"op_{index}_end:",
                      "    call checkpoint"]
        return [*lines, "    jmp finish"]

    def source(self, runtime_include: str) -> str:
        """The case as an .asm file that includes the runtime (``runtime_include``: the path
        of fuzz/runtime.asm relative to the file) and runs with `trapvisor run FILE`."""
        return "\n".join([f'%include "{runtime_include}"',
                          "times BODY - 0x7c00 - ($ - $$) db 0", *self.body_lines()]) + "\n"

    @classmethod
    def from_source(cls, text: str, seed: int = 0) -> "StructuredCase":
        """The ops back from ``source()``'s text: each between its kind comment and its end."""
        ops, kind, lines = [], None, []
        for line in text.splitlines():
            if kind is None:
                marker = OP_MARKER.match(line)
                if marker:
                    kind, lines = marker.group(1), []
            elif OP_END.match(line):
                ops.append(Op(kind, "\n".join(lines)))
                kind = None
            else:
                lines.append(line.strip())
        return cls(seed, tuple(ops))

    def image(self) -> bytes:
        return self.assembled[0]

    def logged_image(self) -> bytes:
        """The image with the runtime's ``log_mode`` set: records go to RAM (RECORD_LOG)."""
        offset = runtime()[1]["log_mode"] - BOOT_ADDRESS
        image = self.image()
        return image[:offset] + b"\1" + image[offset + 1:]

    def op_addresses(self) -> list[int]:
        """Where each op starts (its ``op_N`` label)."""
        return self.assembled[1]

    @functools.cached_property
    def assembled(self) -> tuple[bytes, list[int]]:
        """The image and its op addresses: the body linked from units assembled once
        (fuzz/link.py), or assembled whole where an op's unit cannot be linked."""
        with ASSEMBLER:
            try:
                body, starts = linker().link([tuple(op.lines()) for op in self.ops])
            except Unlinkable:
                body, starts = self.assemble_body()
        code, symbols = runtime()
        return code.ljust(symbols["BODY"] - BOOT_ADDRESS, b"\0") + body, starts

    def assemble_body(self) -> tuple[bytes, list[int]]:
        """The body as one program through the assembler, the reference the linker matches."""
        body = assemble("\n".join(["bits 32", f"org {runtime()[1]['BODY']:#x}",
                                   *runtime_header(), *self.body_lines()]) + "\n")
        return body.code, [body.symbols[f"op_{index}"] for index in range(len(self.ops))]


@dataclass(frozen=True)
class RandomBytesCase:
    """Random bytes as a boot sector, entered in real mode at 0000:7C00."""
    seed: int
    code: bytes

    kind = "bytes"

    @classmethod
    def generate(cls, seed: int, length: int) -> "RandomBytesCase":
        rng = random.Random(seed)
        return cls(seed, rng.randbytes(max(1, length)))

    def with_code(self, code: bytes) -> "RandomBytesCase":
        return RandomBytesCase(self.seed, code)

    def image(self) -> bytes:
        return self.code

    def source(self, runtime_include: str = "") -> str:
        """The bytes as an .asm file (a boot sector at 0x7C00)."""
        rows = [", ".join(f"{b:#04x}" for b in self.code[i:i + 16])
                for i in range(0, len(self.code), 16)]
        return "bits 16\norg 0x7c00\n" + "".join(f"db {row}\n" for row in rows)

    @classmethod
    def from_source(cls, text: str, seed: int = 0) -> "RandomBytesCase":
        with ASSEMBLER:
            return cls(seed, assemble(text).code)

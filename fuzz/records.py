"""The records a structured case writes to the 0xE9 console (fuzz/runtime.asm): a checkpoint
after each op, one record per event the IDT caught, the control registers at the end. A run that
ended early leaves a truncated stream; the partial record at its end is kept as such."""
from __future__ import annotations

import struct
from typing import NamedTuple

CHECKPOINT, EVENT, FINAL = ord("C"), ord("X"), ord("F")
LENGTHS = {CHECKPOINT: 58, EVENT: 15, FINAL: 13}
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


class Record(NamedTuple):
    tag: int
    op: int            # the op it belongs to; -1 for the final record or an unknown tag
    raw: bytes

    def describe(self) -> str:
        if self.tag == CHECKPOINT and len(self.raw) == LENGTHS[CHECKPOINT]:
            values = struct.unpack_from("<8IIHHHHIII", self.raw, 2)
            gprs = " ".join(f"{n}={v:08x}" for n, v in zip(GPR_NAMES, values))
            ds, es, fs, gs = values[9:13]
            return (f"after op {self.op}: {gprs} eflags={values[8]:08x} ds={ds:04x} es={es:04x} "
                    f"fs={fs:04x} gs={gs:04x} scratch-sum={values[13]:08x} cr0={values[14]:08x} "
                    f"cr4={values[15]:08x}")
        if self.tag == EVENT and len(self.raw) == LENGTHS[EVENT]:
            vector = self.raw[2]
            frame = struct.unpack_from("<3I", self.raw, 3)
            return (f"in op {self.op}: vector {vector:#04x}, frame top "
                    + " ".join(f"{word:08x}" for word in frame))
        if self.tag == FINAL and len(self.raw) == LENGTHS[FINAL]:
            cr0, cr3, cr4 = struct.unpack_from("<3I", self.raw, 1)
            return f"final: cr0={cr0:08x} cr3={cr3:08x} cr4={cr4:08x}"
        return f"partial or unknown record {self.raw.hex()}"


def parse(output: bytes) -> list[Record]:
    records, offset = [], 0
    while offset < len(output):
        tag = output[offset]
        length = LENGTHS.get(tag, len(output) - offset)
        raw = output[offset:offset + length]
        op = raw[1] if tag in (CHECKPOINT, EVENT) and len(raw) > 1 else -1
        records.append(Record(tag, op, raw))
        offset += length
    return records

"""The snapshot file: a versioned header, then named sections, each with its length and CRC-32.

    header  "TRAPSNAP" | u16 version | u16 kind (0 full, 1 diff) | u32 sections
            | 16-byte snapshot id | 16-byte base id (a diff's full snapshot; zeros for a full one)
    section 16-byte name (NUL padded) | u64 length | u32 CRC-32 of the data | data

Structured sections are MessagePack (plain data: no pickling, so a hostile file can only be
refused, never run); raw sections (the CPU state, RAM pages) are bytes. Every way a file can be
wrong (not a snapshot, another version, truncated, a checksum that does not match) is a
``SnapshotError`` with a one-line message.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

import msgpack

MAGIC = b"TRAPSNAP"
VERSION = 1
FULL, DIFF = 0, 1
KINDS = {FULL: "full", DIFF: "diff"}
_HEADER = struct.Struct("<8sHHI16s16s")
_SECTION = struct.Struct("<16sQI")


class SnapshotError(ValueError):
    """A snapshot file that cannot be used; the message says why, on one line."""


@dataclass
class Snapshot:
    """A snapshot in memory: its kind, identity, the full snapshot it is a diff of, sections."""
    kind: int = FULL
    ident: bytes = field(default_factory=lambda: os.urandom(16))
    base: bytes = bytes(16)
    sections: dict[str, bytes] = field(default_factory=dict)

    def put(self, name: str, value) -> None:
        """Store plain data as a MessagePack section."""
        self.sections[name] = msgpack.packb(value, use_bin_type=True)

    def get(self, name: str):
        """A MessagePack section as plain data."""
        try:
            return msgpack.unpackb(self.raw(name), raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise SnapshotError(f"section {name!r} is not valid MessagePack: {exc}") from None

    def raw(self, name: str) -> bytes:
        if name not in self.sections:
            raise SnapshotError(f"the snapshot has no {name!r} section")
        return self.sections[name]

    def to_bytes(self) -> bytes:
        parts = [_HEADER.pack(MAGIC, VERSION, self.kind, len(self.sections), self.ident,
                              self.base)]
        for name, data in self.sections.items():
            parts.append(_SECTION.pack(name.encode(), len(data), zlib.crc32(data)))
            parts.append(data)
        return b"".join(parts)


def write(path, snapshot: Snapshot) -> int:
    """Write the file (atomically: a crash leaves the old file or none); return its size."""
    data = snapshot.to_bytes()
    temporary = f"{path}.partial"
    with open(temporary, "wb") as out:
        out.write(data)
    os.replace(temporary, path)
    return len(data)


def read(path) -> Snapshot:
    try:
        with open(path, "rb") as source:
            data = source.read()
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from None
    return parse(data, str(path))


def parse(data: bytes, where: str = "snapshot") -> Snapshot:
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
        raise SnapshotError(f"{where} is not a trapvisor snapshot (no TRAPSNAP header)")
    _magic, version, kind, count, ident, base = _HEADER.unpack_from(data)
    if version != VERSION:
        raise SnapshotError(f"{where} is snapshot format version {version}; this trapvisor "
                            f"reads version {VERSION}")
    if kind not in KINDS:
        raise SnapshotError(f"{where} has an unknown snapshot kind {kind}")
    snapshot = Snapshot(kind, ident, base)
    offset = _HEADER.size
    for _ in range(count):
        name, data_ = _section(data, offset, where)
        snapshot.sections[name] = data_
        offset += _SECTION.size + len(data_)
    if offset != len(data):
        raise SnapshotError(f"{where} has {len(data) - offset} bytes after its last section")
    return snapshot


def _section(data: bytes, offset: int, where: str) -> tuple[str, bytes]:
    if offset + _SECTION.size > len(data):
        raise SnapshotError(f"{where} is truncated (a section header is cut off at byte "
                            f"{offset})")
    raw_name, length, crc = _SECTION.unpack_from(data, offset)
    name = raw_name.rstrip(b"\0").decode("ascii", "replace")
    start = offset + _SECTION.size
    if start + length > len(data):
        raise SnapshotError(f"{where} is truncated: section {name!r} needs {length} bytes, "
                            f"{len(data) - start} remain")
    body = data[start:start + length]
    if zlib.crc32(body) != crc:
        raise SnapshotError(f"{where} is corrupt: section {name!r} fails its CRC-32 check")
    return name, body

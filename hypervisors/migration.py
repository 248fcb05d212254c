"""Live migration between two trapvisor processes over TCP, with QEMU's names: the target runs
`trapvisor run --incoming tcp:HOST:PORT` and waits; the source runs the guest with
`--migrate tcp:HOST:PORT --at-exit N` (or --at-instruction N) and moves it when it gets there.

Pre-copy (QEMU's RAM migration): the source sends every non-zero page, lets the guest run a
round (ROUND_EXITS exits or ROUND_INSTRUCTIONS instructions), sends the pages written meanwhile
(dirty tracking by page hashes, vmm/snapshot/ram.py), and so on until a round dirties at most
STOP_PAGES pages or MAX_ROUNDS have run. Then stop-and-copy: the guest stays paused, the last
dirty pages and the whole machine state go as one diff snapshot, the target loads it and acks,
and the guest continues there. Downtime is from the guest's last instruction on the source to
that ack. One CPU runs both: the guest is paused while a round's pages are sent. Under
``--hypervisor micro`` the VM is a child partition whose device state comes from its parent
partition (hypervisors/micro/snapshots.py); the target may run either hypervisor.

Messages: a tag byte and a u64 length, then the payload: M (the run's configuration,
MessagePack), P (pages, the snapshot RAM section's layout), S (the final snapshot file), A (the
target's ack), E (the source gave up: the guest ended before it could move).
"""
from __future__ import annotations

import socket
import struct
import sys
import time
from dataclasses import dataclass

import msgpack

from hypervisors.snapshot_run import built, machine_of, meta, trigger
from vmm.snapshot import format as snapfile
from vmm.snapshot import machine, ram

ROUND_EXITS, ROUND_INSTRUCTIONS = 200, 200_000
STOP_PAGES, MAX_ROUNDS = 64, 8
_HEADER = struct.Struct("<cQ")


class MigrationError(ValueError):
    """The migration stream broke or carried something unexpected."""


def address(text: str) -> tuple[str, int]:
    """'tcp:HOST:PORT' -> (host, port)."""
    rest = text.removeprefix("tcp:")
    host, sep, port = rest.rpartition(":")
    if not text.startswith("tcp:") or not sep or not port.isdigit() or int(port) > 0xFFFF:
        raise ValueError(f"not tcp:HOST:PORT: {text!r} (try tcp:127.0.0.1:4444)")
    return host or "127.0.0.1", int(port)


def _send(sock, tag: bytes, payload: bytes = b"") -> int:
    sock.sendall(_HEADER.pack(tag, len(payload)) + payload)
    return _HEADER.size + len(payload)


def _receive(stream) -> tuple[bytes, bytes]:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise MigrationError("the migration stream ended early")
    tag, length = _HEADER.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        raise MigrationError("the migration stream ended inside a message")
    return tag, payload


@dataclass
class Figures:
    rounds: int = 0
    bytes: int = 0
    pages: int = 0
    total_s: float = 0.0
    downtime_s: float = 0.0

    def describe(self) -> str:
        return (f"{self.rounds} pre-copy rounds, {self.pages} pages, {self.bytes} bytes, "
                f"total {self.total_s:.3f} s, downtime {self.downtime_s * 1e3:.1f} ms")


def migrate_run(args, build, image, say=print):
    """Boot, run to the trigger (--at-exit N or --at-instruction N), migrate; None when the
    guest moved, else its result (it ended first)."""
    exits, steps = trigger(args, "--migrate")
    if len(exits or steps) != 1:
        raise ValueError("--migrate moves the guest once: give one --at-exit or --at-instruction")
    hypervisor = machine_of(build([]))
    try:
        hypervisor.boot(image)
        vcpu = hypervisor.vcpu
        alive = (machine.run_to(vcpu, exit_number=exits[0]) if exits
                 else machine.run_to(vcpu, instructions=steps[0]))
        if not alive:
            return vcpu.result()
        return migrate(args, hypervisor, exits is not None, say)
    finally:
        hypervisor.close()


def migrate(args, hypervisor, by_exits: bool, say=print):
    """The source side, the guest paused at the trigger: None when it moved, else the result of
    a guest that ended during pre-copy."""
    trigger_exit = hypervisor.vcpu.exit_count
    figures = send(args.migrate, hypervisor, meta(args), by_exits)
    if figures is None:
        return hypervisor.vcpu.result()
    say(f"trapvisor: pre-copy from exit {trigger_exit}, moved at exit "
        f"{hypervisor.vcpu.exit_count} to {args.migrate}: {figures.describe()}", file=sys.stderr)
    return None


def send(where: str, hypervisor, config: dict, by_exits: bool) -> Figures | None:
    """Move the paused machine to the target at ``where`` (tcp:HOST:PORT), whose hypervisor is
    built from ``config`` (the run's meta); its figures, or None if the guest ended during
    pre-copy (rounds run by exits when ``by_exits``, else by instructions)."""
    figures, started = Figures(), time.perf_counter()
    with socket.create_connection(address(where), timeout=60) as sock:
        figures.bytes += _send(sock, b"M", msgpack.packb(config, use_bin_type=True))
        memory = hypervisor.vm.memory
        pages = ram.nonzero_pages(memory)
        hashes = ram.PageHashes(memory)
        while True:
            figures.bytes += _send(sock, b"P", ram.encode(memory, pages))
            figures.pages += len(pages)
            figures.rounds += 1
            if not _run_round(hypervisor.vcpu, by_exits):
                _send(sock, b"E", b"the guest ended during pre-copy")
                return None
            if len(pages) <= STOP_PAGES or figures.rounds == MAX_ROUNDS:
                break
            pages = hashes.dirty(memory)
        stopped = time.perf_counter()
        final = machine.capture(hypervisor, snapfile.Snapshot(), hashes)
        figures.pages += int.from_bytes(final.raw("ram")[:4], "little")
        figures.bytes += _send(sock, b"S", final.to_bytes())
        if _receive(sock.makefile("rb"))[0] != b"A":
            raise MigrationError("the target did not acknowledge the machine state")
        figures.downtime_s = time.perf_counter() - stopped
    figures.total_s = time.perf_counter() - started
    return figures


def _run_round(vcpu, by_exits: bool) -> bool:
    if by_exits:
        return machine.run_to(vcpu, exit_number=vcpu.exit_count + ROUND_EXITS)
    return machine.run_to(vcpu, instructions=ROUND_INSTRUCTIONS)


def incoming(args, make, say=print):
    """The target side: wait for one source, take the VM, return the hypervisor ready to run."""
    with socket.create_server(address(args.incoming)) as server:
        host, port = server.getsockname()[:2]
        say(f"trapvisor: waiting for a migration on tcp:{host}:{port}", file=sys.stderr,
            flush=True)
        sock, _peer = server.accept()
    with sock:
        stream = sock.makefile("rb")
        tag, payload = _receive(stream)
        if tag != b"M":
            raise MigrationError("a migration starts with the run's configuration")
        hypervisor = built(msgpack.unpackb(payload, raw=False), args, make)
        try:
            _take(hypervisor, stream)
        except BaseException:
            hypervisor.close()
            raise
        _send(sock, b"A")
    return hypervisor


def _take(hypervisor, stream) -> None:
    while True:
        tag, payload = _receive(stream)
        if tag == b"P":
            ram.apply(hypervisor.vm.memory, payload)
        elif tag == b"S":
            machine.load(hypervisor, snapfile.parse(payload, "the migrated state"))
            return
        elif tag == b"E":
            raise MigrationError(f"the source gave up: {payload.decode(errors='replace')}")
        else:
            raise MigrationError(f"unexpected migration message {tag!r}")

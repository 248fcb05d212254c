"""A GDB remote serial protocol stub (GDB manual, appendix "GDB Remote Serial Protocol") for a guest
run under ``vmm.debug.debuggee.Debuggee``: real gdb attaches with ``target remote HOST:PORT``.

The guest runs in the thread that serves gdb; a reader thread per connection splits gdb's byte
stream into packets, acknowledgements and Ctrl-C, so an interrupt or a hang-up can stop a running
``cont()``. Breakpoints (Z0/Z1) are the core's address breakpoints (guest memory is never patched),
write, read and access watchpoints (Z2/Z3/Z4) its watchpoints; ``monitor`` commands break on VM exits. A gdb that
detaches or disconnects leaves the hypervisor running: the guest waits for the next gdb, or runs
to its end if it had been told to continue (a new gdb may still connect and stop it).
"""
from __future__ import annotations

import enum
import queue
import re
import socket
import sys
import threading
from typing import Callable

from emu.paging import BusError, Fault
from vmm.debug.gdb import registers as gdbregs
from vmm.debug.debuggee import Debuggee, Stop, StopKind
from vmm.debug.arguments import DebuggerError, parse_exit_filter
from vmm.debug.exit_notes import ExitNotes
from vmm.exit_decoding import qualification
from vmm.debug.gdb.wire import PACKET_SIZE, Link, escape, unescape
from vmm.debug.views import snapshot
from vmm.run_state import RunResult, RunState

REPEAT_S = 0.02          # how often a stop request is repeated until the run it targets returns
PAGE = 0x1000
SIGINT, SIGTRAP = 2, 5   # gdb's own signal numbers (include/gdb/signals.def), as RSP uses them
END_SIGNALS = {RunState.TRIPLE_FAULT: 11, RunState.GUEST_FAULT: 10, RunState.HALTED: 15,
               RunState.TIMEOUT: 14, RunState.MAX_EXITS: 24, RunState.VMM_ERROR: 6}
E_FAULT, E_INVALID = "E14", "E22"   # errno-style error replies (EFAULT, EINVAL), as QEMU gives
WATCH_KINDS = {2: "write", 3: "read", 4: "access"}  # Z2/Z3/Z4


class Runner:
    """Runs the guest in the calling thread; other threads stop it through ``interrupt``.

    Debuggee.cont() discards a stop requested just before it starts, so a request is repeated
    until the run it was meant for has returned; ``run`` does not start at all if its ``unless``
    event is already set (a Ctrl-C or a new connection that came first)."""

    def __init__(self, debuggee: Debuggee):
        self.debuggee = debuggee
        self.lock = threading.Lock()
        self.current: threading.Event | None = None  # set when the active run returns

    def run(self, go: Callable[[], Stop], unless: threading.Event) -> Stop | None:
        with self.lock:
            if unless.is_set():
                return None
            self.current = done = threading.Event()
        try:
            return go()
        finally:
            with self.lock:
                self.current = None
            done.set()

    def interrupt(self) -> None:
        with self.lock:
            done = self.current
        if done is not None:
            threading.Thread(target=self._repeat, args=(done,), daemon=True).start()

    def _repeat(self, done: threading.Event) -> None:
        while not done.is_set():
            self.debuggee.interrupt()
            done.wait(REPEAT_S)


class Ending(enum.Enum):
    STOPPED = "stopped"   # gdb went away with the guest stopped: wait for the next gdb
    RUNNING = "running"   # detached, or gone while the guest ran: the guest runs on
    KILLED = "killed"


SESSION_ENDS = {Ending.STOPPED: "gone; the guest waits for the next gdb",
                Ending.RUNNING: "detached or gone; the guest runs on",
                Ending.KILLED: "killed the guest"}


BREAK_EXIT_USAGE = "break-exit REASON [port N] [cr N] [msr N] [vector N] [rip A-B]"
MONITOR_HELP = f"""trapvisor monitor commands:
  {BREAK_EXIT_USAGE}
        stop on a VM exit of that reason (name or SDM number), optionally filtered
  delete-exit [ID]   delete one exit breakpoint, or all of them
  last-exit          the last VM exit: reason, SDM number, qualification, guest RIP
  help               this text
"""


class GdbStub:
    """Answers one gdb's packets for a Debuggee; ``serve`` returns how the session ended."""

    def __init__(self, debuggee: Debuggee, runner: Runner, notes: ExitNotes):
        self.debuggee = debuggee
        self.runner = runner
        self.notes = notes                     # what the handler did at each exit
        self.break_in = threading.Event()      # Ctrl-C or hang-up: stop (or do not start) a run
        self.inserted: dict[tuple[int, int, int], int] = {}  # (Z type, address, kind) -> id
        self.exit_points: set[int] = set()
        self.ending: Ending | None = None
        self.link: Link | None = None
        self.handlers: dict[str, Callable[[bytes], str | None]] = {
            "?": lambda _: self.stop_reply(self.debuggee.stop),
            "g": self._read_registers, "G": self._write_registers,
            "p": self._read_register, "P": self._write_register,
            "m": self._read_memory, "M": self._write_memory, "X": self._write_binary,
            "c": lambda a: self._resume(self.debuggee.cont, a),
            "C": lambda a: self._resume(self.debuggee.cont, a.partition(b";")[2]),
            "s": lambda a: self._resume(self.debuggee.stepi, a),
            "S": lambda a: self._resume(self.debuggee.stepi, a.partition(b";")[2]),
            "vCont?": lambda _: "vCont;c;C;s;S", "vCont": self._vcont,
            "Z": self._insert, "z": self._remove,
            "H": lambda _: "OK", "T": lambda _: "OK", "qAttached": lambda _: "1",
            "qSymbol": lambda _: "OK", "QStartNoAckMode": lambda _: "OK",
            "qSupported": lambda _: (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;"
                                     "swbreak+;hwbreak+;QStartNoAckMode+"),
            "qXfer": self._xfer, "qRcmd": self._monitor,
            "D": self._detach, "k": self._kill, "vKill": lambda a: self._kill(a) or "OK"}

    def interrupt(self) -> None:
        """From the reader thread: Ctrl-C, or gdb hung up."""
        self.break_in.set()
        self.runner.interrupt()

    def serve(self, link: Link) -> Ending:
        self.link = link
        while self.ending is None:
            packet = link.receive()
            if packet is None:
                return Ending.STOPPED
            reply = self.dispatch(packet)
            if reply is not None:
                link.send(reply)
        return self.ending

    def dispatch(self, packet: bytes) -> str | None:
        """The reply to one packet ('' means unsupported), None for packets that get none."""
        named = re.match(rb"[qQv][A-Za-z]+\??", packet)
        name = named.group().decode() if named else packet[:1].decode("latin-1")
        handler = self.handlers.get(name)
        if handler is None:
            return ""
        try:
            return handler(packet[len(name):])
        except (ValueError, IndexError):
            return E_INVALID

    # ----- stops --------------------------------------------------------------------------------
    def stop_reply(self, stop: Stop) -> str:
        if stop.kind is StopKind.ENDED:
            return end_reply(stop.result)
        if stop.kind is StopKind.INTERRUPTED:
            return f"T{SIGINT:02x}"
        if stop.kind is StopKind.WATCHPOINT:
            access = self.debuggee.table[stop.breakpoint].access
            name = {"write": "watch", "read": "rwatch", "access": "awatch"}[access]
            return f"T{SIGTRAP:02x}{name}:{stop.address:x};"
        if stop.kind is StopKind.BREAKPOINT:
            hardware = any(key[0] == 1 for key, bp in self.inserted.items() if bp == stop.breakpoint)
            return f"T{SIGTRAP:02x}{'hwbreak' if hardware else 'swbreak'}:;"
        return f"T{SIGTRAP:02x}"

    def _resume(self, go: Callable[[], Stop], address: bytes = b"") -> str:
        """c/s [ADDR], C/S SIG[;ADDR] (a signal means nothing to a guest and is dropped)."""
        if address:
            self.debuggee.set_register("eip", int(address, 16))
        stop = self.runner.run(go, unless=self.break_in)
        self.break_in.clear()
        if stop is None:
            stop = Stop(StopKind.INTERRUPTED, self.debuggee.exit_number)
        if self.link.closed:
            self.ending = Ending.RUNNING  # gdb went away while the guest ran: it runs on
        elif stop.kind is StopKind.EXIT:
            self.link.console(exit_note(stop))
        elif stop.kind is StopKind.ENDED and not stop.result.ok:
            self.link.console(stop.result.report() + "\n")
        return self.stop_reply(stop)

    def _vcont(self, args: bytes) -> str:
        """vCont;ACTION[:THREAD]...: one vCPU, so the first action applies."""
        action = args[1:].split(b";")[0].split(b":")[0][:1]
        if action in (b"c", b"C"):
            return self._resume(self.debuggee.cont)
        if action in (b"s", b"S"):
            return self._resume(self.debuggee.stepi)
        return E_INVALID

    # ----- registers and memory -----------------------------------------------------------------
    def _read_registers(self, _: bytes) -> str:
        return gdbregs.encode_all(self.debuggee.registers())

    def _write_registers(self, args: bytes) -> str:
        current = self.debuggee.registers()
        changed = {name: value for name, value in gdbregs.decode_all(args.decode()).items()
                   if value != current.get(name)}
        return self._set_registers(changed)

    def _read_register(self, args: bytes) -> str:
        return gdbregs.encode(gdbregs.REGISTERS[int(args, 16)], self.debuggee.registers())

    def _write_register(self, args: bytes) -> str:
        number, _, value = args.decode().partition("=")
        reg = gdbregs.REGISTERS[int(number, 16)]
        if not reg.guest:
            return E_INVALID
        return self._set_registers({reg.name: gdbregs.decode(reg, value)})

    def _set_registers(self, values: dict[str, int]) -> str:
        try:
            for name, value in values.items():
                self.debuggee.set_register(name, value)
        except KeyError:
            return E_INVALID  # the core cannot write this one (segments, control registers)
        return "OK"

    def _read_memory(self, args: bytes) -> str:
        """m ADDR,LEN: as many bytes as are mapped from ADDR on; E14 if not even the first is."""
        address, length = (int(field, 16) for field in args.split(b","))
        data = bytearray()
        while len(data) < length:
            here = (address + len(data)) & 0xFFFFFFFF
            try:
                data += self.debuggee.read_virtual(here, min(length - len(data), PAGE - here % PAGE))
            except (Fault, BusError):
                break
        return data.hex() if data or not length else E_FAULT

    def _write_memory(self, args: bytes) -> str:
        where, _, hexdata = args.partition(b":")
        return self._store(where, bytes.fromhex(hexdata.decode()))

    def _write_binary(self, args: bytes) -> str:
        where, _, data = args.partition(b":")
        return self._store(where, unescape(data))

    def _store(self, where: bytes, data: bytes) -> str:
        address, length = (int(field, 16) for field in where.split(b","))
        if length != len(data):
            return E_INVALID
        try:
            if data:
                self.debuggee.write_virtual(address, data)
        except (Fault, BusError):
            return E_FAULT
        return "OK"

    # ----- breakpoints and watchpoints ----------------------------------------------------------
    def _insert(self, args: bytes) -> str:
        """Z0/Z1 ADDR: the core's address breakpoints (no 0xCC in guest memory; like debug
        registers they may name a linear address not mapped yet). Z2/Z3/Z4: write, read and
        access watchpoints, on mapped memory only."""
        key = point(args)
        ztype, address, kind = key
        if ztype > 4:
            return ""
        if key not in self.inserted:
            try:
                self.inserted[key] = self._add_point(ztype, address, kind)
            except (Fault, BusError):
                return E_FAULT
        return "OK"

    def _add_point(self, ztype: int, address: int, kind: int) -> int:
        if ztype < 2:
            return self.debuggee.add_breakpoint(address)
        self.debuggee.read_virtual(address, kind)  # Fault/BusError: not mapped
        return self.debuggee.add_watchpoint(address, kind, WATCH_KINDS[ztype])

    def _remove(self, args: bytes) -> str:
        key = point(args)
        if key[0] > 4:
            return ""
        if key in self.inserted:
            self.debuggee.delete(self.inserted.pop(key))
        return "OK"

    # ----- queries, monitor commands, the end of a session --------------------------------------
    def _xfer(self, args: bytes) -> str:
        """qXfer:features:read:target.xml:OFFSET,LENGTH."""
        _, obj, op, annex, span = args.decode().split(":")
        if (obj, op) != ("features", "read"):
            return ""
        if annex != "target.xml":
            return E_INVALID
        offset, length = (int(field, 16) for field in span.split(","))
        chunk = gdbregs.TARGET_XML.encode()[offset:offset + length]
        more = offset + length < len(gdbregs.TARGET_XML)
        return (b"m" if more else b"l").decode() + escape(chunk).decode("latin-1")

    def _monitor(self, args: bytes) -> str:
        """qRcmd,HEX: the output goes to gdb's console as 'O' packets, then OK."""
        self.link.console(self.monitor(bytes.fromhex(args[1:].decode()).decode(errors="replace")))
        return "OK"

    def monitor(self, line: str) -> str:
        words = line.split()
        commands = {"help": lambda _: MONITOR_HELP, "break-exit": self._break_exit,
                    "delete-exit": self._delete_exit, "last-exit": self._last_exit}
        if not words:
            return MONITOR_HELP
        if words[0] not in commands:
            return f"unknown monitor command {words[0]!r}; try `monitor help`\n"
        try:
            return commands[words[0]](words[1:])
        except (ValueError, DebuggerError) as exc:
            return f"{exc}\n"

    def _break_exit(self, words: list[str]) -> str:
        if not words:
            raise ValueError(f"usage: monitor {BREAK_EXIT_USAGE}")
        flt = parse_exit_filter(words)  # the debugger's `break exit` syntax
        bp = self.debuggee.add_exit_breakpoint(flt)
        self.exit_points.add(bp)
        return f"exit breakpoint {bp}: {flt.describe()} (exit reason {int(flt.reason)})\n"

    def _delete_exit(self, words: list[str]) -> str:
        doomed = {int(word, 0) for word in words} or set(self.exit_points)
        if not doomed <= self.exit_points:
            raise ValueError(f"no exit breakpoint {', '.join(map(str, doomed - self.exit_points))}")
        for bp in doomed:
            self.debuggee.delete(bp)
        self.exit_points -= doomed
        return f"deleted {len(doomed)} exit breakpoint(s)\n"

    def _last_exit(self, _: list[str]) -> str:
        history = self.debuggee.history
        if not history:
            return "no VM exit yet\n"
        exit, number = history[-1], len(history)
        decoded = qualification(exit)
        lines = [f"exit #{number}: {exit.reason.name} (SDM exit reason {int(exit.reason)})",
                 f"  qualification {exit.qualification:#x}" + (f": {decoded}" if decoded else ""),
                 f"  guest RIP {exit.rip:#010x}"]
        if exit.insn_bytes:
            lines.append(f"  instruction bytes {exit.insn_bytes.hex(' ')}")
        if self.notes.action(number):
            lines.append(f"  handler: {self.notes.action(number)}")
        return "\n".join(lines) + "\n"

    def _detach(self, _: bytes) -> str:
        self.ending = Ending.RUNNING
        return "OK"

    def _kill(self, _: bytes) -> None:
        """k gets no reply (vKill gets OK); the session ends and the guest with it."""
        self.ending = Ending.KILLED


def exit_note(stop: Stop) -> str:
    """What gdb's console shows when an exit breakpoint stops the guest (gdb only sees SIGTRAP)."""
    exit, decoded = stop.exit, qualification(stop.exit)
    return (f"trapvisor: exit breakpoint {stop.breakpoint}: {stop.describe()} at guest RIP "
            f"{exit.rip:#010x}" + (f": {decoded}" if decoded else "") + "\n")


def point(args: bytes) -> tuple[int, int, int]:
    """Z/z TYPE,ADDR,KIND[;conditions] -> (type, address, kind)."""
    ztype, address, kind = args.split(b";")[0].split(b",")
    return int(ztype), int(address, 16), int(kind, 16)


def end_reply(result: RunResult) -> str:
    """W STATUS when the guest ended through the debug-exit port, X SIGNAL for any other end."""
    if result.state is RunState.EXITED:
        return f"W{result.status & 0xFF:02x}"
    return f"X{END_SIGNALS.get(result.state, SIGTRAP):02x}"


class GdbServer:
    """Serves one gdb at a time on a listening socket until the guest ends or gdb kills it."""

    def __init__(self, debuggee: Debuggee, notes: ExitNotes, listener: socket.socket,
                 log: Callable[[str], None]):
        self.debuggee = debuggee
        self.notes = notes
        self.listener = listener
        self.log = log
        self.runner = Runner(debuggee)

    def run(self) -> RunResult | None:
        """How the guest ended; None if gdb killed it."""
        ending = Ending.STOPPED
        while self.debuggee.ended is None:
            conn = self.listener.accept()[0] if ending is Ending.STOPPED else self._run_free()
            if conn is None:
                break
            ending = self._session(conn)
            if ending is Ending.KILLED:
                return None
        self.log(f"gdb: {self.debuggee.stop.describe()}")
        return self.debuggee.ended

    def _session(self, conn: socket.socket) -> Ending:
        self.log(f"gdb: connected from {format_peer(conn)}")
        stub = GdbStub(self.debuggee, self.runner, self.notes)
        link = Link(conn, stub.interrupt)
        try:
            ending = stub.serve(link)
        finally:
            link.close()
            self.debuggee.delete()  # breakpoints belong to the session that set them
        if self.debuggee.ended is None or ending is Ending.KILLED:
            self.log(f"gdb: {SESSION_ENDS[ending]}")
        return ending

    def _run_free(self) -> socket.socket | None:
        """Let the guest run to its end, unless a new gdb connects first: that stops it."""
        arrivals: queue.Queue[socket.socket] = queue.Queue()
        arrived = threading.Event()
        threading.Thread(target=self._accept_into, args=(arrivals, arrived), daemon=True).start()
        while self.debuggee.ended is None and not arrived.is_set():
            self.runner.run(self.debuggee.cont, unless=arrived)
        return arrivals.get() if arrived.is_set() else None

    def _accept_into(self, arrivals: queue.Queue, arrived: threading.Event) -> None:
        try:
            conn = self.listener.accept()[0]
        except OSError:
            return  # the listener closed: the guest ended
        arrivals.put(conn)
        arrived.set()
        self.runner.interrupt()


def format_peer(conn: socket.socket) -> str:
    host, port = conn.getpeername()[:2]
    return f"{host}:{port}"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve(build: Callable[[list], object], image, host: str, port: int,
          log: Callable[[str], None] = _stderr) -> RunResult | None:
    """Boot ``image`` on a hypervisor from ``build`` stopped at its first instruction and let gdb
    drive it from HOST:PORT (port 0 picks a free one). Returns how the guest ended, None if gdb
    killed it."""
    try:
        listener = socket.create_server((host, port))
    except OSError as exc:
        raise ValueError(f"--gdb {host}:{port}: cannot listen: {exc.strerror or exc}") from exc
    notes = ExitNotes(lambda: snapshot(debuggee))
    debuggee = Debuggee(lambda observers: build([notes, *observers]), image)
    try:
        with listener:
            log(f"gdb: waiting for a connection on {host}:{listener.getsockname()[1]}")
            return GdbServer(debuggee, notes, listener, log).run()
    finally:
        debuggee.close()

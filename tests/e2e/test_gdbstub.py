"""The GDB remote stub: packet framing and every packet against an in-test RSP client, then real
gdb in batch mode attached to `trapvisor run GUEST --gdb 127.0.0.1:0`."""
from __future__ import annotations

import collections
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import guests
from conftest import CLI, PROGRAMS, trapvisor
from emu.asm import assemble_file
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.debug.gdb import registers as gdbregs
from vmm.debug.gdb.stub import end_reply, serve
from vmm.debug.gdb.wire import FrameParser, escape, frame, unescape
from vmm.vcpu import RunResult, RunState

HELLO = assemble_file(guests.path("hello"))
USERMODE = assemble_file(guests.path("usermode"))
EIP = 8  # register numbers in the target description
# Spins until a debugger sets EAX, then exits with status 7: a guest that runs as long as a test
# needs it to.
SPIN_ASM = """bits 16
org 0x7c00
start:
    cli
    xor eax, eax
spin:
    test eax, eax
    jz spin
    mov al, 7
    out 0xf4, al
"""


# ----- the wire, without a guest ----------------------------------------------------------------
def test_frames_carry_a_two_digit_modulo_256_checksum():
    assert frame(b"g") == b"$g#67"
    assert frame(b"") == b"$#00"
    assert frame(b"qSupported:swbreak+") == b"$qSupported:swbreak+#%02x" % (
        sum(b"qSupported:swbreak+") % 256)


def test_parser_splits_packets_acks_and_ctrl_c_across_reads():
    parser = FrameParser()
    assert parser.feed(b"+$g#6") == [("ack", b"+")]
    assert parser.feed(b"7\x03-$m0,4#fd$g#00") == [
        ("packet", b"g"), ("interrupt", b""), ("ack", b"-"), ("packet", b"m0,4"),
        ("corrupt", b"g")]


def test_binary_escapes_round_trip():
    data = bytes(range(256))
    escaped = escape(data)
    assert not set(escaped) & set(b"#$*") and escaped.count(b"}") == 4 and len(escaped) == 260
    assert unescape(escaped) == data


def test_target_description_is_i386_with_the_core_registers_gdb_requires():
    root = ET.fromstring(gdbregs.TARGET_XML.split("\n", 2)[2])
    assert root.findtext("architecture") == "i386"
    core = root.find("feature[@name='org.gnu.gdb.i386.core']")
    names = [reg.get("name") for reg in core.findall("reg")]
    assert names[:16] == ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip",
                          "eflags", "cs", "ss", "ds", "es", "fs", "gs"]
    assert names[16:24] == [f"st{i}" for i in range(8)]
    assert names[24:] == ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
    regnums = [int(reg.get("regnum")) for reg in root.iter("reg")]
    assert regnums == list(range(len(gdbregs.REGISTERS)))


def test_register_block_is_little_endian_with_x87_as_zeros():
    text = gdbregs.encode_all({"eax": 0x11223344, "eip": 0x7C00})
    assert len(text) == 2 * (16 * 4 + 8 * 10 + 8 * 4 + 4 * 4)
    assert text.startswith("44332211") and text[EIP * 8:EIP * 8 + 8] == "007c0000"
    assert gdbregs.decode_all(text)["eip"] == 0x7C00


def test_end_replies_are_w_for_the_debug_exit_port_and_x_for_the_rest():
    exited = RunResult(RunState.EXITED, 3, "")
    assert end_reply(exited) == "W03"
    assert end_reply(RunResult(RunState.TRIPLE_FAULT, None, "")) == "X0b"
    assert end_reply(RunResult(RunState.TIMEOUT, None, "")) == "X0e"


# ----- the stub, through a tiny RSP client ------------------------------------------------------
class RspClient:
    """What gdb does on the wire: send packets, ack replies, collect 'O' console output."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.parser = FrameParser()
        self.events: collections.deque = collections.deque()
        self.acking = True
        self.console = ""

    def ask(self, body: str | bytes) -> str:
        self.send(body.encode("latin-1") if isinstance(body, str) else body)
        return self.reply()

    def send(self, body: bytes) -> None:
        self.sock.sendall(frame(body))
        if self.acking:
            assert self.event() == ("ack", b"+")

    def reply(self) -> str:
        while True:
            kind, body = self.event()
            assert kind == "packet", (kind, body)
            if self.acking:
                self.sock.sendall(b"+")
            if not body.startswith(b"O") or body == b"OK":
                return body.decode("latin-1")
            self.console += bytes.fromhex(body[1:].decode()).decode()

    def event(self) -> tuple[str, bytes]:
        while not self.events:
            data = self.sock.recv(4096)
            if not data:
                raise EOFError("the stub closed the connection")
            self.events.extend(self.parser.feed(data))
        return self.events.popleft()

    def monitor(self, command: str) -> str:
        self.console = ""
        assert self.ask("qRcmd," + command.encode().hex()) == "OK"
        return self.console

    def register(self, number: int) -> int:
        return int.from_bytes(bytes.fromhex(self.ask(f"p{number:x}")), "little")

    def close(self) -> None:
        self.sock.close()


class ServedGuest:
    """`serve()` in a background thread, as `trapvisor run GUEST --gdb` runs it."""

    def __init__(self, guest: str | Path):
        self.log: queue.Queue[str] = queue.Queue()
        self.output: list[bytes] = []
        self.result: RunResult | None = None
        image = resolve(str(guest), 32 << 20)
        self.thread = threading.Thread(target=self._serve, args=(image,), daemon=True)
        self.thread.start()
        self.port = int(self.log.get(timeout=60).rsplit(":", 1)[1])

    def _build(self, observers):
        return MonolithicHypervisor(engine="trap", sink=self.output.append, observers=observers)

    def _serve(self, image) -> None:
        self.result = serve(self._build, image, "127.0.0.1", 0, log=self.log.put)

    def connect(self) -> RspClient:
        return RspClient(self.port)

    def finish(self) -> RunResult | None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the gdb server did not finish"
        return self.result


@pytest.fixture
def hello():
    served = ServedGuest("hello")
    client = served.connect()
    yield served, client
    client.close()


def spin_guest(tmp_path: Path) -> Path:
    path = tmp_path / "spin.asm"
    path.write_text(SPIN_ASM)
    return path


def test_bad_checksum_is_nacked_and_a_good_packet_acked(hello):
    _, client = hello
    client.sock.sendall(b"$g#00")
    assert client.event() == ("ack", b"-")
    client.sock.sendall(b"$?#3f")
    assert client.event() == ("ack", b"+")
    assert client.reply() == "T05"


def test_qsupported_announces_the_features_gdb_needs(hello):
    _, client = hello
    features = client.ask("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386").split(";")
    assert {"qXfer:features:read+", "swbreak+", "hwbreak+", "QStartNoAckMode+"} <= set(features)
    assert int(next(f for f in features if f.startswith("PacketSize=")).split("=")[1], 16) >= 1024


def test_target_xml_is_read_in_chunks(hello):
    _, client = hello
    text, offset = "", 0
    while True:
        chunk = client.ask(f"qXfer:features:read:target.xml:{offset:x},100")
        text += unescape(chunk[1:].encode("latin-1")).decode()
        offset += 0x100
        if chunk[0] == "l":
            break
        assert chunk[0] == "m"
    assert text == gdbregs.TARGET_XML
    assert client.ask("qXfer:features:read:other.xml:0,100") == "E22"


def test_registers_at_entry_and_register_writes(hello):
    _, client = hello
    regs = gdbregs.decode_all(client.ask("g"))
    assert regs["eip"] == 0x7C00 and regs["edx"] == 0x80 and regs["esp"] == 0x7C00
    assert client.ask("P0=78563412") == "OK"
    assert client.register(0) == 0x12345678
    block = client.ask("g")
    assert client.ask("G" + block) == "OK"  # unchanged values are not written back
    assert client.ask("P10=08000000") == "E22"  # the core cannot load CS
    assert client.ask("P10=00000000") == "E22"


def test_memory_reads_the_image_through_virtual_addresses(hello):
    _, client = hello
    assert bytes.fromhex(client.ask("m7c00,20")) == HELLO.code[:0x20]
    assert client.ask("m4000000,4") == "E14"  # beyond the 32 MiB of RAM
    assert bytes.fromhex(client.ask("m1fffffe,4")) == b"\0\0"  # as much as is mapped


def test_memory_writes_with_m_and_x(hello):
    _, client = hello
    assert client.ask("M9000,4:deadbeef") == "OK"
    assert client.ask(b"X9004,2:" + escape(b"#}")) == "OK"
    assert client.ask("X9000,0:") == "OK"
    assert client.ask("m9000,6") == "deadbeef237d"
    assert client.ask("M4000000,1:00") == "E14"


def test_software_breakpoint_stops_there_without_patching_memory(hello):
    served, client = hello
    target = HELLO.symbols["start.next"]
    assert client.ask(f"Z0,{target:x},1") == "OK"
    assert bytes.fromhex(client.ask(f"m{target:x},1")) == HELLO.code[target - HELLO.origin:][:1]
    assert client.ask("c") == "T05swbreak:;"
    assert client.register(EIP) == target
    assert client.ask(f"z0,{target:x},1") == "OK"
    assert client.ask("c") == "W00"
    assert b"".join(served.output) == b"Hello from a trapvisor guest!\n"


def test_hardware_breakpoint_and_vcont(hello):
    _, client = hello
    target = HELLO.symbols["start.wait"]
    assert client.ask("vCont?") == "vCont;c;C;s;S"
    assert client.ask(f"Z1,{target:x},1") == "OK"
    assert client.ask("vCont;c:1") == "T05hwbreak:;"
    assert client.register(EIP) == target
    assert client.ask("vCont;s") == "T05"
    assert client.register(EIP) == target + 1  # in al, dx


def test_step_advances_one_instruction(hello):
    _, client = hello
    assert client.ask("s") == "T05"
    assert client.register(EIP) == 0x7C01  # after cli
    assert client.ask("s") == "T05"
    assert client.register(EIP) == 0x7C03  # after xor ax, ax


def test_guest_end_is_w_with_its_status_and_the_server_returns_it(hello):
    served, client = hello
    assert client.ask("c") == "W00"
    client.close()
    result = served.finish()
    assert result.state is RunState.EXITED and result.status == 0


def test_monitor_last_exit_and_break_exit(hello):
    _, client = hello
    assert client.monitor("last-exit") == "no VM exit yet\n"
    assert "break-exit REASON" in client.monitor("help")
    created = client.monitor("break-exit io_instruction port 0x3fb")
    assert created == "exit breakpoint 1: IO_INSTRUCTION port 0x3fb (exit reason 30)\n"
    assert client.ask("c") == "T05"
    assert "IO_INSTRUCTION" in client.console and "port 0x3fb" in client.console
    shown = client.monitor("last-exit")
    assert "IO_INSTRUCTION (SDM exit reason 30)" in shown
    assert "qualification 0x3fb0000: port 0x3fb, 1 byte, out" in shown
    assert "guest RIP 0x00007c10" in shown
    assert "uart16550 LCR" in shown
    assert "unknown exit reason 'NOPE'" in client.monitor("break-exit NOPE")
    assert "unknown exit filter 'nope'" in client.monitor("break-exit HLT nope 1")
    assert "usage: monitor break-exit REASON" in client.monitor("break-exit")
    assert "unknown monitor command" in client.monitor("frobnicate")
    assert "deleted 1" in client.monitor("delete-exit")
    assert client.ask("c") == "W00"


def test_read_and_access_watchpoints_stop_after_the_access(hello):
    """hello reads its message with LODSB: a read watchpoint on the third byte stops right
    after the LODSB that read it (SI has moved past it); an access watchpoint does too."""
    _, client = hello
    third = HELLO.symbols["message"] + 2
    assert client.ask(f"Z3,{third:x},1") == "OK"
    assert client.ask("c") == f"T05rwatch:{third:x};"
    esi = int.from_bytes(bytes.fromhex(client.ask("p6")), "little")
    assert esi & 0xFFFF == third + 1
    assert client.ask(f"z3,{third:x},1") == "OK"
    assert client.ask(f"Z4,{third + 1:x},1") == "OK"
    assert client.ask("c") == f"T05awatch:{third + 1:x};"
    assert client.ask(f"z4,{third + 1:x},1") == "OK"
    assert client.ask("Z2,4000000,4") == "E14"
    assert client.ask("c") == "W00"


def test_no_ack_mode(hello):
    _, client = hello
    assert client.ask("QStartNoAckMode") == "OK"
    client.acking = False
    assert client.ask("?") == "T05"
    assert client.ask("s") == "T05"


def test_write_watchpoint_reports_the_watched_address():
    served = ServedGuest("usermode")
    client = served.connect()
    written_a = USERMODE.symbols["written_a"]
    assert client.ask(f"Z2,{written_a:x},4") == "OK"
    assert client.ask("c") == f"T05watch:{written_a:x};"
    assert int.from_bytes(bytes.fromhex(client.ask(f"m{written_a:x},4")), "little") == 26
    assert client.ask(f"z2,{written_a:x},4") == "OK"
    assert client.ask("c") == "W00"
    client.close()


def test_ctrl_c_interrupts_a_running_guest(tmp_path):
    served = ServedGuest(spin_guest(tmp_path))
    client = served.connect()
    client.send(b"c")
    time.sleep(0.3)
    client.sock.sendall(b"\x03")
    assert client.reply() == "T02"
    assert client.ask("P0=01000000") == "OK"
    assert client.ask("c") == "W07"
    client.close()
    assert served.finish().status == 7


def test_triple_fault_ends_with_x_and_a_report():
    served = ServedGuest(PROGRAMS / "triplefault.asm")
    client = served.connect()
    assert client.ask("c") == "X0b"
    assert "triple-fault" in client.console
    client.close()
    assert served.finish().state is RunState.TRIPLE_FAULT


def test_detach_lets_the_guest_run_to_its_end(hello):
    served, client = hello
    assert client.ask(f"Z0,{HELLO.symbols['start.next']:x},1") == "OK"
    assert client.ask("D") == "OK"
    result = served.finish()  # the session's breakpoint went with it
    assert result.state is RunState.EXITED and result.status == 0


def test_kill_ends_the_run(hello):
    served, client = hello
    assert client.ask("vKill;1") == "OK"
    assert served.finish() is None


def test_a_new_gdb_finds_the_guest_where_the_last_one_left_it(hello):
    served, client = hello
    assert client.ask("s") == "T05"
    client.close()
    again = served.connect()
    assert again.ask("?") == "T05"
    assert again.register(EIP) == 0x7C01
    assert again.ask("c") == "W00"
    again.close()
    assert served.finish().status == 0


def test_hang_up_while_running_lets_the_guest_run_and_a_new_gdb_stop_it(tmp_path):
    served = ServedGuest(spin_guest(tmp_path))
    client = served.connect()
    client.send(b"c")
    time.sleep(0.3)
    client.close()
    time.sleep(0.3)
    assert served.thread.is_alive()
    again = served.connect()
    assert again.ask("?") == "T02"
    assert again.ask("P0=01000000") == "OK"
    assert again.ask("c") == "W07"
    again.close()
    assert served.finish().status == 7


# ----- real gdb against `trapvisor run --gdb` ---------------------------------------------------
GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (.ci/run installs it)")


class Lines:
    """A pipe read line by line in the background, so a test can wait for what it expects."""

    def __init__(self, stream):
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            self.seen.append(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
        return self.seen[-1]

    def text(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


class Trapvisor:
    """`trapvisor run GUEST --gdb 127.0.0.1:0` in a subprocess, and gdbs attached to it."""

    def __init__(self, guest: str | Path, *options: str):
        self.proc = subprocess.Popen([*CLI, "run", str(guest), "--gdb", "127.0.0.1:0", *options],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log = Lines(self.proc.stderr)
        first = self.log.wait_for("gdb: waiting for a connection on 127.0.0.1:")
        self.port = int(first.strip().rsplit(":", 1)[1])

    def gdb_command(self, *commands: str) -> list[str]:
        args = [GDB, "-nx", "-q", "-ex", "set architecture i386",
                "-ex", f"target remote 127.0.0.1:{self.port}"]
        for command in commands:
            args += ["-ex", command]
        return args

    def gdb(self, *commands: str) -> str:
        """gdb -batch: it runs the commands, then quits (which detaches: the guest runs on)."""
        done = subprocess.run([*self.gdb_command(*commands), "-batch"], capture_output=True,
                              text=True, timeout=120)
        return done.stdout + done.stderr

    def interactive_gdb(self, *commands: str) -> tuple[subprocess.Popen, Lines]:
        gdb = subprocess.Popen(self.gdb_command(*commands), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return gdb, Lines(gdb.stdout)

    def finish(self) -> tuple[int, str]:
        status = self.proc.wait(timeout=120)
        return status, self.proc.stdout.read()


@pytest.fixture
def trapvisor_gdb():
    started: list[Trapvisor] = []
    yield lambda guest, *options: started.append(Trapvisor(guest, *options)) or started[-1]
    for tv in started:
        if tv.proc.poll() is None:
            tv.proc.kill()
            tv.proc.wait()


@needs_gdb
def test_gdb_sees_the_guest_stopped_at_its_first_instruction(trapvisor_gdb):
    tv = trapvisor_gdb("hello")
    out = tv.gdb("info registers", "x/4xb 0x7c00", "monitor last-exit")
    assert re.search(r"^eip\s+0x7c00\s", out, re.M), out
    assert re.search(r"^edx\s+0x80\s", out, re.M), out
    dumped = re.search(r"^0x7c00:\s+(.*)$", out, re.M).group(1).split()
    assert bytes(int(byte, 16) for byte in dumped) == HELLO.code[:4]
    assert "no VM exit yet" in out
    status, output = tv.finish()  # gdb quit = detach: the guest ran to its end
    assert status == 0 and output == "Hello from a trapvisor guest!\n"


@needs_gdb
def test_gdb_break_continue_stepi(trapvisor_gdb):
    tv = trapvisor_gdb("hello")
    target = HELLO.symbols["start.next"]
    out = tv.gdb(f"break *{target:#x}", "continue", "p/x $pc", "stepi", "p/x $pc", "delete",
                 "continue")
    assert f"Breakpoint 1, {target:#010x} in ?? ()" in out, out
    assert f"$1 = {target:#x}" in out and f"$2 = {target + 1:#x}" in out  # lodsb
    assert "[Inferior 1 (Remote target) exited normally]" in out
    assert tv.finish()[0] == 0


@needs_gdb
def test_gdb_monitor_stops_at_an_io_exit(trapvisor_gdb):
    tv = trapvisor_gdb("hello")
    out = tv.gdb("monitor last-exit", "monitor break-exit IO_INSTRUCTION", "continue",
                 "monitor last-exit", "p/x $pc")
    assert "exit breakpoint 1: IO_INSTRUCTION (exit reason 30)" in out, out
    assert "Program received signal SIGTRAP" in out
    assert "IO_INSTRUCTION (SDM exit reason 30)" in out
    assert "qualification 0x3f90000: port 0x3f9, 1 byte, out" in out
    assert "guest RIP 0x00007c0a" in out and "$1 = 0x7c0b" in out
    assert tv.finish()[0] == 0


@needs_gdb
def test_gdb_watch_on_a_ring3_variable(trapvisor_gdb):
    tv = trapvisor_gdb("usermode")
    written_a = USERMODE.symbols["written_a"]
    out = tv.gdb(f"watch *(int *){written_a:#x}", "continue", "delete", "continue")
    assert f"Hardware watchpoint 1: *(int *){written_a:#x}" in out, out
    assert "Old value = 0\nNew value = 26" in out
    assert "[Inferior 1 (Remote target) exited normally]" in out
    assert tv.finish()[0] == 0


@needs_gdb
def test_gdb_ctrl_c_interrupts_the_guest(trapvisor_gdb, tmp_path):
    tv = trapvisor_gdb(spin_guest(tmp_path))
    gdb, out = tv.interactive_gdb("continue")
    tv.log.wait_for("gdb: connected")
    time.sleep(1)
    gdb.send_signal(signal.SIGINT)
    out.wait_for("Program received signal SIGINT")
    gdb.stdin.write("set var $eax = 1\ncontinue\n")
    gdb.stdin.flush()
    out.wait_for("[Inferior 1 (Remote target) exited with code 07]")
    gdb.communicate(timeout=60)
    assert tv.finish()[0] == 7


@needs_gdb
def test_killing_gdb_at_a_breakpoint_leaves_trapvisor_waiting(trapvisor_gdb):
    tv = trapvisor_gdb("hello")
    target = HELLO.symbols["start.next"]
    gdb, out = tv.interactive_gdb(f"break *{target:#x}", "continue")
    out.wait_for("Breakpoint 1, ")
    gdb.kill()
    gdb.wait()
    tv.log.wait_for("the guest waits for the next gdb")
    assert tv.proc.poll() is None
    again = tv.gdb("p/x $pc", "continue")
    assert f"$1 = {target:#x}" in again and "exited normally" in again, again
    status, output = tv.finish()
    assert status == 0 and output == "Hello from a trapvisor guest!\n"


@needs_gdb
def test_killing_gdb_while_the_guest_runs_leaves_it_running(trapvisor_gdb, tmp_path):
    tv = trapvisor_gdb(spin_guest(tmp_path))
    gdb, _ = tv.interactive_gdb("continue")
    tv.log.wait_for("gdb: connected")
    time.sleep(1)
    gdb.kill()
    gdb.wait()
    tv.log.wait_for("the guest runs on")
    time.sleep(0.5)
    assert tv.proc.poll() is None
    out = tv.gdb("set var $eax = 1", "continue")  # a new gdb stops the running guest
    assert "exited with code 07" in out, out
    assert tv.finish()[0] == 7


@needs_gdb
def test_gdb_kill_ends_trapvisor_with_status_3(trapvisor_gdb):
    tv = trapvisor_gdb("hello")
    assert "[Inferior 1 (Remote target) killed]" in tv.gdb("kill")
    assert tv.finish()[0] == 3
    assert "trapvisor: gdb killed the guest" in tv.log.text()


@needs_gdb
def test_gdb_breaks_on_a_label_from_the_elf_trapvisor_asm_writes(trapvisor_gdb, tmp_path):
    source, program = guests.path("hello"), tmp_path / "hello.elf"
    assert trapvisor("asm", str(source), "-o", str(program)).returncode == 0
    tv = trapvisor_gdb(source)
    out = tv.gdb(f"file {program}", "break start.wait", "continue", "p/x $pc", "x/2i $pc",
                 "x/s message", "delete", "continue")
    wait = HELLO.labels["start.wait"]
    assert f"Breakpoint 1 at {wait:#x}" in out, out  # no prologue skipped: the label itself
    assert f"$1 = {wait:#x}" in out
    assert re.search(rf"^=> {wait:#x} <start.wait>:\s+in\s", out, re.M)
    assert re.search(r'<message>:\s+"Hello from a trapvisor guest!\\n"', out)
    assert "[Inferior 1 (Remote target) exited normally]" in out
    status, output = tv.finish()
    assert status == 0 and output == "Hello from a trapvisor guest!\n"


def test_gdb_option_wants_host_and_port():
    done = trapvisor("run", "hello", "--gdb", "nonsense")
    assert done.returncode == 2 and "not HOST:PORT: 'nonsense'" in done.stderr


def test_a_port_in_use_is_refused_with_a_message():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = trapvisor("run", "hello", "--gdb", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert f"--gdb 127.0.0.1:{port}: cannot listen: Address already in use" in done.stderr

"""`trapvisor debug`: an interactive, scriptable debugger over VM exits, with gdb's command names.

A ``cmd.Cmd`` shell over ``vmm.debug.debuggee.Debuggee``: breakpoints on guest addresses, on writes and
on VM exits (by SDM reason, filtered), stepping by instruction or by exit, going back to any
earlier exit by deterministic replay, and the machine state of ``vmm.debug.views``. Every stop is
reported with the exit's SDM qualification and what the handler did (``vmm.debug.exit_notes``). Guest
serial output is shown as it is produced, each line prefixed with ``guest| ``.
"""
from __future__ import annotations

import cmd
import contextlib
import signal
import sys
import textwrap
from pathlib import Path

from emu.paging import BusError, Fault
from vmm.debug import views
from vmm.debug.arguments import (
    DebuggerError,
    describe_fault,
    parse_address,
    parse_count,
    parse_dump,
    parse_exit_filter,
    parse_number,
)
from vmm.debug.debuggee import Debuggee, StopKind
from vmm.debug.exit_notes import ExitNotes, history_report, stop_report
from vmm.debug.symbols import SymbolTable
from vmm.vmcs import ExitReason

PROMPT = "(trapvisor) "
GUEST_PREFIX = b"guest| "
HISTORY_FILE = Path.home() / ".trapvisor_history"
ALIASES = {"c": "continue", "si": "stepi", "b": "break", "i": "info", "q": "quit",
           "exit": "quit", "disassemble": "disas"}
INFO_TOPICS = ("breakpoints", "registers", "gdt", "idt", "pages", "vmcs", "devices", "exits",
               "symbol")
REPEATABLE = ("stepi", "next_exit", "continue")


class SerialEcho:
    """The guest's serial output, written as produced with a prefix at each line start. A replay
    from boot (goto-exit) produces the same bytes again: only bytes never shown are written."""

    def __init__(self, stream):
        self.stream = stream
        self.produced = 0
        self.shown = 0
        self.at_line_start = True

    def rebooted(self) -> None:
        self.produced = 0

    def write(self, data: bytes) -> None:
        fresh = data[max(self.shown - self.produced, 0):]
        self.produced += len(data)
        if fresh:
            self.shown = self.produced
            self._emit(fresh)

    def _emit(self, data: bytes) -> None:
        for line in data.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(GUEST_PREFIX)
            self.stream.write(line)
            self.at_line_start = line.endswith(b"\n")
        self.stream.flush()

    def end_line(self) -> None:
        """Before the debugger speaks: finish a partial guest line."""
        if not self.at_line_start:
            self.stream.write(b"\n")
            self.stream.flush()
            self.at_line_start = True


class Debugger(cmd.Cmd):
    """The command loop. ``make(sink, observers)`` builds a fresh, not yet booted hypervisor."""

    prompt = PROMPT
    identchars = cmd.Cmd.identchars + "-"  # gdb's next-exit, reverse-exit, goto-exit
    doc_header = "Commands (help COMMAND for details):"

    def __init__(self, make, image):
        super().__init__()
        self.echo = SerialEcho(sys.stdout.buffer)
        self.symbols = SymbolTable(image.symbols, image.symbols_end)
        self.notes = ExitNotes(lambda: views.snapshot(self.debuggee), self.symbols)
        self.make = make
        self.failed = False
        self.interactive = False
        self.debuggee = Debuggee(self._build, image, on_checkpoint=lambda: self.echo.produced,
                                 on_restart=self._restart)
        self.report_stop()

    def _build(self, observers):
        return self.make(self.echo.write, [self.notes, *observers])

    def _restart(self, checkpoint) -> None:
        """The guest runs again from boot (None) or from a snapshot: output and notes rewind."""
        if checkpoint is None:
            self.echo.rebooted()
            self.notes.reset()
        else:
            self.echo.produced = checkpoint.extra
            self.notes.forget_after(checkpoint.exit_number)

    # ----- output -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.echo.end_line()
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def error(self, text: str) -> None:
        self.failed = True
        self.echo.end_line()
        self.stdout.flush()
        sys.stderr.write(f"error: {text}\n")
        sys.stderr.flush()

    # ----- the command loop ---------------------------------------------------------------------
    def parseline(self, line: str):
        command, arg, line = super().parseline(line.strip())
        if command is not None:
            command = ALIASES.get(command, command).replace("-", "_")
        return command, arg, line

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except (DebuggerError, ValueError, KeyError) as exc:
            self.error(str(exc.args[0]) if exc.args else str(exc))
        except (Fault, BusError) as exc:
            self.error(f"guest memory is not accessible there: {describe_fault(exc)}")
        except Exception as exc:  # noqa: BLE001 - the session survives any one command
            self.error(f"internal error in {line.split()[0]!r}: {type(exc).__name__}: {exc}")
        return False

    def default(self, line: str) -> None:
        self.error(f"unknown command {line.split()[0]!r}; `help` lists the commands")

    def emptyline(self) -> bool:
        if self.interactive and self.parseline(self.lastcmd)[0] in REPEATABLE:
            return self.onecmd(self.lastcmd)
        return False

    def run_script(self, lines) -> bool:
        """Run commands (--ex, -x FILE); echo each one; True if one of them was `quit`."""
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            self.say(f"{PROMPT}{line.strip()}")
            if self.onecmd(line):
                return True
        return False

    def interact(self) -> None:
        self.interactive = True
        with readline_history():
            while True:
                try:
                    self.cmdloop()
                    return
                except KeyboardInterrupt:
                    self.say("^C (type quit to leave)")

    def do_quit(self, arg: str) -> bool:
        """quit: leave the debugger; the guest is discarded. Also `q`, `exit`, Ctrl-D."""
        return True

    def do_EOF(self, arg: str) -> bool:
        self.say("")
        return True

    def do_help(self, arg: str) -> None:
        """help [COMMAND]: list the commands, or explain one."""
        name = ALIASES.get(arg.strip(), arg.strip()).replace("-", "_")
        if not name:
            self.say("\n".join([self.doc_header] + [f"  {help_text(self, n)[0]}"
                                                    for n in self.get_names()
                                                    if n.startswith("do_") and n != "do_EOF"]))
            return
        if name == "EOF" or not hasattr(self, f"do_{name}"):
            raise DebuggerError(f"no command {arg.strip()!r}; `help` lists the commands")
        self.say("\n".join(help_text(self, f"do_{name}")))

    # ----- breakpoints --------------------------------------------------------------------------
    def do_break(self, arg: str) -> None:
        """break ADDR | break exit REASON [FILTER]: stop at an address, or on a VM exit. Also `b`.

        break ADDR stops before the guest executes the instruction at linear ADDR: a number, a
        symbol of the guest or $reg, with an optional +N or -N (also written *ADDR).
        break exit REASON stops right after an exit of REASON (its SDM name, case-insensitive,
        or number) was handled; FILTER narrows it with any of port N, cr N, msr N (ECX),
        vector N (exception or interrupt), rip A-B (guest RIP range).
        Examples: break 0x7c10, break start.next, break start+0x10,
        break exit IO_INSTRUCTION port 0x3f8, break exit 28 cr 0"""
        words = arg.split()
        if not words:
            raise DebuggerError("usage: break ADDR | break exit REASON [filter]")
        if words[0] == "exit":
            flt = parse_exit_filter(words[1:])
            number = self.debuggee.add_exit_breakpoint(flt)
            self.say(f"Breakpoint {number}: exit {flt.describe()}")
            return
        address = self.address(arg)
        self.require_mapped(address, "break")
        number = self.debuggee.add_breakpoint(address)
        self.say(f"Breakpoint {number} at {address:#x}{self.symbols.tag(address)}")

    def complete_break(self, text: str, line: str, begin: int, end: int) -> list[str]:
        if line.split()[1:2] == ["exit"] and len(line[:begin].split()) == 2:
            return [r.name for r in ExitReason if r.name.startswith(text.upper())]
        return ["exit"] if "exit".startswith(text) and len(line[:begin].split()) == 1 else []

    def do_watch(self, arg: str) -> None:
        """watch ADDR [LEN]: stop when the guest writes to LEN bytes (default 4) at ADDR.

        ADDR is linear and must be mapped now; the stop shows the old and the new bytes."""
        words = arg.split()
        if not 1 <= len(words) <= 2:
            raise DebuggerError("usage: watch ADDR [LEN]")
        address = self.address(words[0])
        length = parse_count(words[1], "length") if len(words) == 2 else 4
        self.require_mapped(address, "watch", length)
        number = self.debuggee.add_watchpoint(address, length)
        self.say(f"Watchpoint {number}: {length} bytes at {address:#x}"
                 f"{self.symbols.tag(address)}")

    def require_mapped(self, address: int, what: str, length: int = 1) -> None:
        for linear in {address, address + length - 1}:
            try:
                physical = self.debuggee.translate(linear)
            except (Fault, BusError) as exc:
                raise DebuggerError(f"cannot {what} at {linear:#x}: not mapped in the guest's "
                                    f"address space ({describe_fault(exc)})") from None
            if physical >= self.debuggee.vm.memory.size:
                raise DebuggerError(f"cannot {what} at {linear:#x}: physical {physical:#x} is "
                                    f"outside guest RAM ({self.debuggee.vm.memory.size >> 20} MiB)")

    def do_delete(self, arg: str) -> None:
        """delete [N]: delete breakpoint or watchpoint N, or all of them."""
        if arg.strip():
            number = parse_number(arg.strip(), "breakpoint number")
            try:
                self.debuggee.delete(number)
            except KeyError:
                raise DebuggerError(f"no breakpoint number {number}") from None
            self.say(f"Deleted breakpoint {number}")
        else:
            self.debuggee.delete()
            self.say("Deleted all breakpoints")

    # ----- running ------------------------------------------------------------------------------
    def do_continue(self, arg: str) -> None:
        """continue: run until a breakpoint, a watchpoint, Ctrl-C or the guest's end. Also `c`."""
        self.go(self.debuggee.cont)

    def do_stepi(self, arg: str) -> None:
        """stepi [N]: execute N guest instructions (default 1). Also `si`."""
        count = parse_count(arg.strip(), "instruction count") if arg.strip() else 1
        self.go(lambda: self.debuggee.stepi(count))

    def do_next_exit(self, arg: str) -> None:
        """next-exit: run until the next VM exit has been handled."""
        if self.debuggee.engine.name == "native":
            raise DebuggerError("the native engine takes no VM exits (there is no VMM): use "
                                "continue, stepi or break ADDR")
        self.go(self.debuggee.next_exit)

    def do_savevm(self, arg: str) -> None:
        """savevm NAME: snapshot the whole machine (CPU, devices, RAM, time) under NAME for this
        session; loadvm NAME comes back to it, and goto-exit replays from it."""
        name = arg.strip()
        if not name or " " in name:
            raise DebuggerError("usage: savevm NAME")
        checkpoint = self.debuggee.save(name)
        self.say(f"Saved {name!r} at exit #{checkpoint.exit_number}")

    def do_loadvm(self, arg: str) -> None:
        """loadvm NAME: put the machine back as savevm NAME left it."""
        if not arg.strip():
            raise DebuggerError("usage: loadvm NAME")
        self.debuggee.load(arg.strip())
        self.report_stop()

    def do_goto_exit(self, arg: str) -> None:
        """goto-exit N: go to just after exit N was handled (0: the entry): the nearest snapshot
        at or before N is restored (one is taken every 500 exits, and by savevm), else the
        guest boots again, and the run is replayed from there.

        Replay is deterministic: virtual time comes from executed instructions, so the same
        exits happen in the same order with the same state. Breakpoints do not stop a replay."""
        if not arg.strip():
            raise DebuggerError("usage: goto-exit N")
        target = parse_number(arg.strip(), "exit number")
        if target < 0:
            raise DebuggerError("exit numbers start at 1 (0 is the entry)")
        self.replay(target)

    def do_reverse_exit(self, arg: str) -> None:
        """reverse-exit: go back to the exit before the current one (goto-exit N-1)."""
        current = self.debuggee.exit_number
        if current == 0:
            raise DebuggerError("already at the entry: there is no earlier exit")
        self.replay(current - 1)

    def replay(self, target: int) -> None:
        stop = self.debuggee.goto_exit(target)
        self.report_stop()
        if stop.kind is StopKind.ENDED and self.debuggee.exit_number < target:
            raise DebuggerError(f"the guest ended after {self.debuggee.exit_number} exits: "
                                f"exit {target} never happens")

    def go(self, action) -> None:
        ended = self.debuggee.ended
        if ended is not None:
            raise DebuggerError(f"the guest has ended ({ended.state.value}): use goto-exit N or "
                                "reverse-exit to go back, info/x to inspect")
        with interrupt_to(self.debuggee):
            action()
        self.report_stop()

    # ----- stops --------------------------------------------------------------------------------
    def report_stop(self) -> None:
        self.say(stop_report(self.debuggee, self.debuggee.stop, self.notes, self.symbols))

    # ----- state --------------------------------------------------------------------------------
    def do_info(self, arg: str) -> None:
        """info TOPIC: show machine or debugger state (topics may be abbreviated). Also `i`.

        info breakpoints   breakpoints and watchpoints with their hit counts
        info registers     the registers as the guest sees them beside the real CPU's
        info gdt, info idt the guest's descriptor tables (the IVT in real mode)
        info pages ADDR    the page-table walk for linear ADDR: PDE, PTE, flags, physical
        info vmcs          the guest-state area, the last exit's fields, the controls
        info devices       the 16550 UART, 8259 PIC and 8254 PIT registers
        info exits [N]     the last N exits (default 10) and the count per exit reason
        info symbol ADDR   the guest symbol ADDR is in, and the offset into it"""
        words = arg.split()
        topic = next((t for t in INFO_TOPICS if words and t.startswith(words[0])), None)
        if topic is None:
            raise DebuggerError(f"info what? one of: {', '.join(INFO_TOPICS)}")
        rest = words[1:]
        d = self.debuggee
        if topic == "pages":
            if len(rest) != 1:
                raise DebuggerError("usage: info pages ADDR")
            self.say(views.page_walk_report(d, self.address(rest[0])))
        elif topic == "exits":
            last = parse_count(rest[0], "exit count") if rest else 10
            self.say(history_report(d.history, self.notes, last))
        elif topic == "breakpoints":
            self.say(self.breakpoint_table())
        elif topic == "symbol":
            if len(rest) != 1:
                raise DebuggerError("usage: info symbol ADDR")
            self.say(self.symbol_at(rest[0]))
        else:
            self.say(self.simple_info(topic))

    def complete_info(self, text: str, line: str, begin: int, end: int) -> list[str]:
        return [topic for topic in INFO_TOPICS if topic.startswith(text)]

    def simple_info(self, topic: str) -> str:
        d = self.debuggee
        if topic == "registers":
            return views.registers_report(d)
        if topic == "gdt":
            return views.gdt_report(d)
        if topic == "idt":
            return views.idt_report(d)
        if topic == "vmcs":
            return views.vmcs_report(d, d.history[-1] if d.history else None)
        return views.devices_report(d.vm)

    def breakpoint_table(self) -> str:
        rows = self.debuggee.breakpoints()
        if not rows:
            return "No breakpoints or watchpoints."
        lines = ["Num  Type   Hits  What"]
        lines += [f"{bp.id:<4} {bp.kind:<6} {bp.hits:<5} {bp.what}"
                  + (self.symbols.tag(bp.address) if bp.address is not None else "")
                  for bp in rows]
        return "\n".join(lines)

    def symbol_at(self, text: str) -> str:
        """gdb's `info symbol`: 'start + 6', or that no symbol holds the address."""
        address = self.address(text)
        found = self.symbols.lookup(address)
        if found is None:
            return f"No symbol matches {text}."
        name, offset = found
        return f"{name} + {offset}" if offset else name

    def do_x(self, arg: str) -> None:
        """x/NFU [-p] ADDR: examine N units of guest memory in hex.

        U is b (bytes), h (16-bit), w (32-bit) or g (64-bit); x ADDR is x/1xw ADDR. ADDR is
        linear, through the guest's page tables, unless -p makes it guest-physical.
        Examples: x/16xb 0x7c00, x/4xw -p 0x1000, x/8xb $pc, x/4xb message"""
        count, unit, physical, where = parse_dump(arg)
        address = self.address(where)
        d = self.debuggee
        data = views.readable(d.read_physical if physical else d.read_virtual, address,
                                count * unit)
        if len(data) < count * unit:
            space = "guest-physical" if physical else "linear"
            raise DebuggerError(f"cannot read {space} {address + len(data):#x}: "
                                + ("outside guest RAM" if physical else "not mapped"))
        self.say(views.hexdump(data, address, unit))

    def do_disas(self, arg: str) -> None:
        """disas [ADDR [N]]: disassemble N instructions (default 10) at ADDR (default: $pc).

        ADDR is linear; the code size (16/32-bit) is the current one; => marks the next
        instruction the guest executes; addresses and branch targets show their symbol,
        <start+6>. Examples: disas, disas start.next 4, disas 0x7c00"""
        words = arg.split()
        if len(words) > 2:
            raise DebuggerError("usage: disas [ADDR [N]]")
        cpu = self.debuggee.cpu
        address = self.address(words[0]) if words else cpu.linear_pc()
        count = parse_count(words[1], "instruction count") if len(words) == 2 else 10
        self.say(views.disassembly(self.debuggee, address, count, cpu.code_bits,
                                   current=cpu.linear_pc(), symbols=self.symbols))

    def address(self, text: str) -> int:
        return parse_address(text, self.registers, self.symbols)

    def registers(self) -> dict[str, int]:
        return {**self.debuggee.registers(), "pc": self.debuggee.cpu.linear_pc()}


def help_text(shell: cmd.Cmd, method: str) -> list[str]:
    """A command's docstring as lines: the summary line, then the dedented details."""
    summary, _, details = getattr(shell, method).__doc__.partition("\n")
    return [summary.strip(), *textwrap.dedent(details).strip("\n").splitlines()]


@contextlib.contextmanager
def interrupt_to(debuggee):
    """While the guest runs, Ctrl-C pauses it instead of killing the debugger."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: debuggee.interrupt())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def readline_history():
    """Line editing and a history kept across sessions in ~/.trapvisor_history (terminals only)."""
    try:
        import readline
    except ImportError:
        readline = None
    if readline is None or not sys.stdin.isatty():
        yield
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(HISTORY_FILE)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(HISTORY_FILE)


def run(make, image, commands: list[str], batch: bool) -> int:
    """The `trapvisor debug` session: 0, or 1 if a command failed in batch mode."""
    debugger = Debugger(make, image)
    try:
        if debugger.run_script(commands) or batch:
            return 1 if debugger.failed else 0
        debugger.interact()
        return 0
    finally:
        debugger.debuggee.close()


__all__ = ["Debugger", "DebuggerError", "SerialEcho", "run"]

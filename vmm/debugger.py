"""`trapvisor debug`: an interactive, scriptable debugger over VM exits, with gdb's command names.

A ``cmd.Cmd`` shell over ``vmm.control.Debuggee``: breakpoints on guest addresses, on writes and
on VM exits (by SDM reason, filtered), stepping by instruction or by exit, going back to any
earlier exit by deterministic replay, and the machine state of ``vmm.inspect``. Every stop is
reported with the exit's SDM qualification and what the handler did (``vmm.exitinfo``). Guest
serial output is shown as it is produced, each line prefixed with ``guest| ``.
"""
from __future__ import annotations

import cmd
import contextlib
import signal
import sys
from pathlib import Path

from emu.paging import BusError, Fault
from vmm import inspect
from vmm.control import Debuggee, StopKind
from vmm.debugargs import (DebuggerError, describe_fault, parse_address, parse_count,
                           parse_dump, parse_exit_filter, parse_number)
from vmm.exitinfo import ExitNotes, history_report, qualification, since_boot

PROMPT = "(trapvisor) "
GUEST_PREFIX = b"guest| "
HISTORY_FILE = Path.home() / ".trapvisor_history"
ALIASES = {"c": "continue", "si": "stepi", "b": "break", "i": "info", "q": "quit",
           "exit": "quit", "disassemble": "disas"}
INFO_TOPICS = ("breakpoints", "registers", "gdt", "idt", "pages", "vmcs", "devices", "exits")
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
    doc_header = "Commands (help COMMAND for details):"

    def __init__(self, make, image, stdout=None, stderr=None):
        super().__init__(stdout=stdout or sys.stdout)
        self.stderr = stderr or sys.stderr
        self.echo = SerialEcho(self.stdout.buffer if hasattr(self.stdout, "buffer") else
                               sys.stdout.buffer)
        self.notes = ExitNotes(lambda: inspect.snapshot(self.debuggee))
        self.make = make
        self.failed = False
        self.interactive = False
        self.debuggee = Debuggee(self._build, image)
        self.report_stop()

    def _build(self, observers):
        self.echo.rebooted()
        self.notes.reset()
        return self.make(self.echo.write, [self.notes, *observers])

    # ----- output -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.echo.end_line()
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def error(self, text: str) -> None:
        self.failed = True
        self.echo.end_line()
        self.stdout.flush()
        self.stderr.write(f"error: {text}\n")
        self.stderr.flush()

    # ----- the command loop ---------------------------------------------------------------------
    def parseline(self, line: str):
        command, arg, line = super().parseline(line.strip())
        if command is not None:
            command = ALIASES.get(command, command).replace("-", "_")
        return command, arg, line

    identchars = cmd.Cmd.identchars + "-"

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
        if self.interactive and self.lastcmd.split(" ")[0] in REPEATABLE:
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
        """quit: leave the debugger (the guest is discarded). Also `q`, `exit`, Ctrl-D."""
        return True

    def do_EOF(self, arg: str) -> bool:
        self.say("")
        return True

    def do_help(self, arg: str) -> None:
        """help [COMMAND]: list the commands, or explain one."""
        name = ALIASES.get(arg.strip(), arg.strip()).replace("-", "_")
        if name:
            method = getattr(type(self), f"do_{name}", None)
            if method is None or name == "EOF":
                raise DebuggerError(f"no command {arg.strip()!r}; `help` lists the commands")
            self.say(method.__doc__.strip())
            return
        self.say(self.doc_header)
        for command in sorted(n[3:] for n in dir(type(self)) if n.startswith("do_")):
            if command != "EOF":
                doc = getattr(type(self), f"do_{command}").__doc__.strip().splitlines()[0]
                self.say(f"  {doc}")

    # ----- breakpoints --------------------------------------------------------------------------
    def do_break(self, arg: str) -> None:
        """break ADDR | break exit REASON [port N] [cr N] [msr N] [vector N] [rip A-B]: stop when
        the guest is about to execute the instruction at linear ADDR (`*ADDR`, `$reg+N` also
        work), or after a VM exit of REASON (SDM name, case-insensitive, or number) was handled,
        filtered by I/O port, control register, MSR (ECX), exception vector or guest RIP range."""
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
        self.say(f"Breakpoint {number} at {address:#x}")

    def do_watch(self, arg: str) -> None:
        """watch ADDR [LEN]: stop when the guest writes to LEN bytes (default 4) at linear ADDR;
        the stop shows the old and the new contents."""
        words = arg.split()
        if not 1 <= len(words) <= 2:
            raise DebuggerError("usage: watch ADDR [LEN]")
        address = self.address(words[0])
        length = parse_count(words[1], "length") if len(words) == 2 else 4
        self.require_mapped(address, "watch", length)
        number = self.debuggee.add_watchpoint(address, length)
        self.say(f"Watchpoint {number}: {length} bytes at {address:#x}")

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
        """continue: run until a breakpoint, a watchpoint, an exit breakpoint, Ctrl-C or the end
        of the guest. Also `c`."""
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

    def do_goto_exit(self, arg: str) -> None:
        """goto-exit N: replay from boot and stop right after exit N was handled (0: the entry).
        Replay is deterministic: virtual time comes from executed instructions."""
        if not arg.strip():
            raise DebuggerError("usage: goto-exit N")
        target = parse_number(arg.strip(), "exit number")
        if target < 0:
            raise DebuggerError("exit numbers start at 1 (0 is the entry)")
        self.replay(target)

    def do_reverse_exit(self, arg: str) -> None:
        """reverse-exit: go back to the exit before the current one (by replay from boot)."""
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
        stop = self.debuggee.stop
        self.say("\n".join(self.stop_lines(stop)))

    def stop_lines(self, stop) -> list[str]:
        kind = stop.kind
        if kind is StopKind.ENDED:
            return [stop.result.report(), "The guest has ended; its final state can be "
                    "inspected (info registers, x, ...)."]
        if kind is StopKind.EXIT:
            lines = self.exit_lines(stop)
        elif kind is StopKind.WATCHPOINT:
            lines = self.watch_lines(stop)
        elif kind is StopKind.BREAKPOINT:
            lines = [f"Breakpoint {stop.breakpoint}, at {stop.address:#x} "
                     f"({since_boot(stop.exit_number)})"]
        elif kind is StopKind.ENTRY:
            lines = ["Stopped at the entry, before the guest's first instruction"]
        else:
            lines = [f"{'Stepped' if kind is StopKind.STEP else 'Interrupted'} "
                     f"({since_boot(stop.exit_number)})"]
        return lines + [f"=> {inspect.location(self.debuggee)}"]

    def exit_lines(self, stop) -> list[str]:
        exit = stop.exit
        why = f", breakpoint {stop.breakpoint}" if stop.breakpoint is not None else ""
        lines = [f"Exit #{stop.exit_number}: {exit.reason.name} ({int(exit.reason)}){why}"]
        detail = qualification(exit)
        if detail:
            lines.append(f"  qualification: {detail}")
        lines.append(f"  guest RIP {exit.rip:#010x}: "
                     f"{inspect.exit_instruction(self.debuggee, exit)}")
        action = self.notes.action(stop.exit_number)
        if action:
            lines.append(f"  handler: {action}")
        return lines

    def watch_lines(self, stop) -> list[str]:
        new = stop.new if stop.new is not None else self.debuggee.read_virtual(
            stop.address, len(stop.old))
        lines = [f"Watchpoint {stop.breakpoint}: {len(stop.old)} bytes at {stop.address:#x} "
                 f"({since_boot(stop.exit_number)})"]
        for label, data in (("old", stop.old), ("new", new)):
            value = int.from_bytes(data, "little")
            number = f" = {value:#x} ({value})" if len(data) in (1, 2, 4, 8) else ""
            lines.append(f"  {label} {data.hex(' ')}{number}")
        return lines

    # ----- state --------------------------------------------------------------------------------
    def do_info(self, arg: str) -> None:
        """info TOPIC: breakpoints | registers | gdt | idt | pages ADDR | vmcs | devices |
        exits [N] (the last N exits, default 10, and the count per exit reason). Also `i`."""
        words = arg.split()
        topic = next((t for t in INFO_TOPICS if words and t.startswith(words[0])), None)
        if topic is None:
            raise DebuggerError(f"info what? one of: {', '.join(INFO_TOPICS)}")
        rest = words[1:]
        d = self.debuggee
        if topic == "pages":
            if len(rest) != 1:
                raise DebuggerError("usage: info pages ADDR")
            self.say(inspect.page_walk_report(d, self.address(rest[0])))
        elif topic == "exits":
            last = parse_count(rest[0], "exit count") if rest else 10
            self.say(history_report(d.history, self.notes, last))
        elif topic == "breakpoints":
            self.say(self.breakpoint_table())
        else:
            self.say(self.simple_info(topic))

    def simple_info(self, topic: str) -> str:
        d = self.debuggee
        if topic == "registers":
            return inspect.registers_report(d)
        if topic == "gdt":
            return inspect.gdt_report(d)
        if topic == "idt":
            return inspect.idt_report(d)
        if topic == "vmcs":
            return inspect.vmcs_report(d, d.history[-1] if d.history else None)
        return inspect.devices_report(d.vm)

    def breakpoint_table(self) -> str:
        rows = self.debuggee.breakpoints()
        if not rows:
            return "No breakpoints or watchpoints."
        lines = ["Num  Type   Hits  What"]
        lines += [f"{bp.id:<4} {bp.kind:<6} {bp.hits:<5} {bp.what}" for bp in rows]
        return "\n".join(lines)

    def do_x(self, arg: str) -> None:
        """x/NFU [-p] ADDR: examine N units of guest memory in hex; U is b (bytes), h (16-bit),
        w (32-bit) or g (64-bit). ADDR is linear (through the guest's page tables) unless -p
        makes it guest-physical. Example: x/16xb 0x7c00, x/4xw -p 0x1000."""
        count, unit, physical, where = parse_dump(arg)
        address = self.address(where)
        d = self.debuggee
        data = inspect.readable(d.read_physical if physical else d.read_virtual, address,
                                count * unit)
        if len(data) < count * unit:
            space = "guest-physical" if physical else "linear"
            raise DebuggerError(f"cannot read {space} {address + len(data):#x}: "
                                + ("outside guest RAM" if physical else "not mapped"))
        self.say(inspect.hexdump(data, address, unit))

    def do_disas(self, arg: str) -> None:
        """disas [ADDR [N]]: disassemble N instructions (default 10) at linear ADDR (default:
        where the guest is stopped, marked =>), in the current code size (16/32-bit)."""
        words = arg.split()
        if len(words) > 2:
            raise DebuggerError("usage: disas [ADDR [N]]")
        cpu = self.debuggee.cpu
        address = self.address(words[0]) if words else cpu.linear_pc()
        count = parse_count(words[1], "instruction count") if len(words) == 2 else 10
        self.say(inspect.disassembly(self.debuggee, address, count, cpu.code_bits,
                                     current=cpu.linear_pc()))

    def address(self, text: str) -> int:
        return parse_address(text, self.registers)

    def registers(self) -> dict[str, int]:
        return {**self.debuggee.registers(), "pc": self.debuggee.cpu.linear_pc()}


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
    """Line editing and a history kept across sessions in ~/.trapvisor_history."""
    try:
        import readline
    except ImportError:
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

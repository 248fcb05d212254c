"""`trapvisor debug` as a user scripts it: --batch with --ex and -x, asserting what stops show."""
from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import guests
from conftest import CLI, PROGRAMS, ROOT, trapvisor
from emu.asm import assemble_file


def debug(guest: str, *commands: str,
          options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = ["debug", guest, "--batch", *options]
    for command in commands:
        args += ["--ex", command]
    return trapvisor(*args)


def sections(stdout: str) -> list[tuple[str, list[str]]]:
    """Each echoed command with its output lines, in order (guest output left out)."""
    found: list[tuple[str, list[str]]] = [("<start>", [])]
    for line in stdout.splitlines():
        if line.startswith("(trapvisor) "):
            found.append((line.removeprefix("(trapvisor) "), []))
        elif not line.startswith("guest| "):
            found[-1][1].append(line)
    return found


def blocks(stdout: str) -> dict[str, list[str]]:
    """The output of each command, keyed by the command (a later repeat wins)."""
    return dict(sections(stdout))


def register_row(stdout: str, name: str) -> list[str]:
    row = next(line for line in stdout.splitlines() if line.split()[:1] == [name])
    return row.split()


def symbol(guest: str, name: str) -> int:
    return assemble_file(guests.path(guest)).symbols[name]


def test_stops_at_the_entry_before_the_first_instruction():
    done = debug("hello", "info registers")
    assert done.returncode == 0, done.stderr
    start = blocks(done.stdout)["<start>"]
    assert start[0] == "Stopped at the entry, before the guest's first instruction"
    assert start[1] == "=> 0000:00007c00 <start>  fa  cli"
    assert register_row(done.stdout, "eip")[1:3] == ["0x00007c00", "0x00007c00"]
    assert "guest|" not in done.stdout  # nothing ran yet


def test_exit_breakpoint_on_the_uart_shows_the_thr_write_of_h():
    done = debug("hello", "break exit IO_INSTRUCTION port 0x3f8", "continue", "continue")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Breakpoint 1: exit IO_INSTRUCTION port 0x3f8" in out
    first, second = [m.start() for m in re.finditer(r"Exit #\d+: IO_INSTRUCTION \(30\)", out)]
    # The first write to 0x3f8 is the divisor latch (LCR.DLAB = 1), the second the first byte.
    assert "OUT 0x3f8 <- 0x01 -> uart16550 DLL" in out[first:second]
    stop = out[second:]
    assert "qualification: port 0x3f8, 1 byte, out, port in dx" in stop
    assert "ee  out dx, al" in stop
    assert "handler: OUT 0x3f8 <- 0x48 'H' -> uart16550 THR" in stop
    assert "guest| H\n" in out[first:second + 1]  # the byte reached the terminal before the stop


def test_stepi_advances_by_instructions():
    done = debug("hello", "stepi 3", "stepi", "si 2")
    assert done.returncode == 0, done.stderr
    steps = blocks(done.stdout)
    # cli (trapped, emulated) ; xor ax, ax ; mov ds, ax -> the IER write sequence
    assert steps["stepi 3"][-1] == "=> 0000:00007c05 <start+5>  ba f9 03  mov dx, 0x3f9"
    assert steps["stepi"][-1] == "=> 0000:00007c08 <start+8>  30 c0  xor al, al"
    assert steps["si 2"][-1] == "=> 0000:00007c0b <start+11>  ba fb 03  mov dx, 0x3fb"
    assert "Stepped (1 exit since boot)" in steps["stepi 3"]  # the CLI was an exit


def test_break_at_an_address_stops_there_and_counts_hits():
    done = debug("hello", "break 0x7c0a", "continue", "info breakpoints", "disas $pc 2")
    assert done.returncode == 0, done.stderr
    out = blocks(done.stdout)
    assert out["break 0x7c0a"] == ["Breakpoint 1 at 0x7c0a <start+10>"]
    assert out["continue"] == ["Breakpoint 1, at 0x7c0a <start+10> (1 exit since boot)",
                               "=> 0000:00007c0a <start+10>  ee  out dx, al"]
    assert "1    break  1     at 0x7c0a <start+10>" in out["info breakpoints"]
    assert out["disas $pc 2"][0].startswith("=> 0x00007c0a <start+10>  ee")


def test_watch_reports_old_and_new_values_of_the_tick_counter():
    ticks = symbol("usermode", "ticks")
    done = debug("usermode", f"watch {ticks:#x}", "continue", "continue", f"x/1xw {ticks:#x}")
    assert done.returncode == 0, done.stderr
    out = blocks(done.stdout)
    assert out[f"watch {ticks:#x}"] == [f"Watchpoint 1: 4 bytes at {ticks:#x} <ticks>"]
    first = out["continue"]  # the later `continue` wins: the second tick
    assert re.fullmatch(rf"Watchpoint 1: 4 bytes at {ticks:#x} <ticks> \(\d+ exits since boot\)",
                        first[0])
    assert "  old 01 00 00 00 = 0x1 (1)" in first
    assert "  new 02 00 00 00 = 0x2 (2)" in first
    assert "  old 00 00 00 00 = 0x0 (0)" in done.stdout
    assert out[f"x/1xw {ticks:#x}"] == [f"{ticks:#010x}:  0x00000002"]


def test_reverse_exit_replays_to_the_same_exit_and_state():
    """Three timer ticks in, usermode is preempting tasks: going back one exit by replay from
    boot must land on the same exit with the same registers as the first time."""
    ticks = symbol("usermode", "ticks")
    done = debug("usermode", f"watch {ticks:#x}", "c", "c", "c", "delete", "next-exit",
                 "info registers", "next-exit", "reverse-exit", "info registers")
    assert done.returncode == 0, done.stderr
    steps = sections(done.stdout)
    first, registers_first, later, back, registers_back = (lines for _, lines in steps[-5:])
    number = int(re.match(r"Exit #(\d+):", first[0]).group(1))
    assert later[0].startswith(f"Exit #{number + 1}: ")
    assert back == first
    assert registers_back == registers_first


def test_goto_exit_then_info_exits_shows_exactly_n_exits():
    done = debug("usermode", "goto-exit 40", "info exits 1", "continue", "goto-exit 40",
                 "info exits 1", "reverse-exit", "info exits 1")
    assert done.returncode == 0, done.stderr
    steps = sections(done.stdout)
    first_goto, first_exits, _, second_goto, second_exits, back, back_exits = (
        lines for _, lines in steps[1:])
    assert first_goto[0].startswith("Exit #40: ")
    assert second_goto == first_goto
    assert first_exits[0] == "40 exits since boot; the last 1:"
    assert first_exits[1].startswith("#40 ") and second_exits == first_exits
    assert back[0].startswith("Exit #39: ")
    assert back_exits[0] == "39 exits since boot; the last 1:"
    assert "all checks passed" in done.stdout  # the continue ran the guest to its end


def test_goto_exit_is_deterministic_across_sessions():
    first = debug("usermode", "goto-exit 300", "info registers", "info exits 3")
    second = debug("usermode", "goto-exit 250", "goto-exit 300", "info registers", "info exits 3")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    one, two = blocks(first.stdout), blocks(second.stdout)
    assert one["info registers"] == two["info registers"]
    assert one["info exits 3"] == two["info exits 3"]
    assert one["info exits 3"][0] == "300 exits since boot; the last 3:"


def test_registers_under_trap_show_shadow_cr0_beside_the_real_one():
    done = debug("hello", "info registers")
    assert done.returncode == 0, done.stderr
    # The guest is in real mode (CR0.PE = 0) but really runs in virtual-8086 mode (CR0.PE = 1).
    assert register_row(done.stdout, "cr0") == ["cr0", "0x00000010", "ET", "0x00000011", "PE",
                                                "ET", "<-", "differs"]
    assert register_row(done.stdout, "cpl") == ["cpl", "0", "3", "<-", "differs"]
    assert register_row(done.stdout, "mode") == ["mode", "real", "mode", "virtual-8086", "mode"]


def test_registers_under_native_are_the_real_ones():
    done = debug("hello", "stepi 5", "info registers", "info vmcs", options=("--engine", "native"))
    assert done.returncode == 0, done.stderr
    assert "differs" not in done.stdout
    assert register_row(done.stdout, "cr0")[1] == "0x00000010"
    assert "the native engine has no VMCS" in done.stdout


def test_bad_input_gets_one_line_errors_and_the_session_goes_on():
    commands = ["frobnicate", "x/4xw zz", "break 0x50000000", "watch", "delete 9", "stepi -1",
                "break exit NOPE", "break exit IO_INSTRUCTION color 3", "info foo",
                "reverse-exit", "x/4xw 0x1fffffc0", "goto-exit", "disas 0x7c00 1", "help x"]
    done = debug("hello", *commands)
    assert done.returncode == 1  # --batch: a command failed
    errors = done.stderr.splitlines()
    assert len(errors) == 12, done.stderr
    assert all(line.startswith("error: ") for line in errors)
    assert "Traceback" not in done.stderr
    assert "unknown command 'frobnicate'" in errors[0]
    assert "bad address: 'zz'" in errors[1]
    assert "outside guest RAM" in errors[2]
    assert "no breakpoint number 9" in done.stderr
    assert "unknown exit reason 'NOPE'" in done.stderr
    assert "already at the entry" in done.stderr
    out = blocks(done.stdout)
    assert out["disas 0x7c00 1"] == ["=> 0x00007c00 <start>  fa                       cli"]
    assert out["help x"][0].startswith("x/NFU [-p] ADDR")


def test_breakpoints_on_unmapped_pages_are_refused():
    done = debug("paging", "break exit INVLPG", "continue", "info pages 0x50000000",
                 "break 0x50000000", "watch 0x50000000", "info pages 0x7c00")
    assert done.returncode == 1
    out = blocks(done.stdout)
    assert "Exit #" in "\n".join(out["continue"]) and "INVLPG (14)" in "\n".join(out["continue"])
    assert "not mapped: an access raises #PF" in out["info pages 0x50000000"]
    assert done.stderr.count("not mapped in the guest's address space") == 2
    assert out["info pages 0x7c00"][-1] == "4 KiB page (supervisor, writable): physical 0x00007c00"


def test_post_mortem_after_a_triple_fault():
    done = debug(str(PROGRAMS / "triplefault.asm"), "c", "info registers",
                 "x/2xb $pc", "info exits 1", "continue", "info gdt")
    assert done.returncode == 1  # the second continue is refused
    out = blocks(done.stdout)
    assert "guest| T" in done.stdout
    assert "trapvisor: triple-fault: triple fault (#BP -> #GP -> #DF -> #GP)" in out["c"]
    assert register_row(done.stdout, "cr0")[1] == "0x00000011"
    assert register_row(done.stdout, "idtr.limit")[1] == "0x0000"
    # the #GP of INT3's delivery is a fault at the INT3, so the machine stops there
    assert out["x/2xb $pc"] == ["0x00007c36:  0xcc 0xb0"]
    assert out["info exits 1"][1] == ("#11     EXCEPTION_NMI      rip 0x00007c36  "
                                      "vector 0x3 #BP, software exception")
    assert "the guest has ended (triple-fault)" in done.stderr
    assert "0x0008  00cf9a000000ffff  base 0x00000000 limit 0xffffffff code r-x" in "\n".join(
        out["info gdt"])


def test_exit_filters_by_cr_rip_and_vector():
    done = debug(str(PROGRAMS / "triplefault.asm"),
                 "break exit cr_access cr 0 rip 0x7c16-0x7c18", "continue", "x/3xb -p 0x7c16")
    assert done.returncode == 0, done.stderr
    out = blocks(done.stdout)
    assert out["continue"] == ["Exit #5: CR_ACCESS (28), breakpoint 1",
                               "  qualification: CR0, MOV to CR from eax",
                               "  guest RIP 0x00007c16 <start+22>: 0f 22 c0  mov cr0, eax",
                               "  handler: emulated `mov cr0, eax`: cr0 0x10 -> 0x11",
                               "=> 0000:00007c19 <start+25>  66 ea 21 7c 00 00 08 00  "
                               "ljmp 8:0x7c21"]
    assert out["x/3xb -p 0x7c16"] == ["0x00007c16:  0x0f 0x22 0xc0"]
    syscall = blocks(debug("usermode", "break exit exception vector 0x80", "continue").stdout)
    stop = syscall["continue"]
    assert stop[1] == "  qualification: vector 0x80, software interrupt"
    assert stop[2].endswith("0x00007deb <task_a+15>: cd 80  int 0x80")
    assert stop[3].startswith("  handler: reflected vector 0x80 through the guest's IDT: "
                              "cpl 0x3 -> 0x0, cs 0x1b -> 0x8")


def test_commands_from_a_file_and_the_help(tmp_path: Path):
    script = tmp_path / "commands.gdb"
    script.write_text("# set up\nbreak exit cr_access\n\ncontinue\ninfo vmcs\n")
    done = trapvisor("debug", "pmode", "--batch", "--ex", "help", "-x", str(script),
                     "--ex", "info idt")
    assert done.returncode == 0, done.stderr
    out = blocks(done.stdout)
    help_text = "\n".join(out["help"])
    for command in ("break", "watch", "delete", "continue", "stepi", "next-exit", "reverse-exit",
                    "goto-exit", "info", "x/NFU", "disas", "quit"):
        assert f"  {command}" in help_text
    stop = "\n".join(out["continue"])
    assert "CR_ACCESS (28), breakpoint 1" in stop
    assert "qualification: CR0, MOV from CR to eax" in stop
    assert "guest-state area:" in out["info vmcs"]
    assert "  cr0              0x10" in out["info vmcs"]  # still real mode: mov eax, cr0 reads
    assert out["info idt"] == ["IVT: IDTR base 0x00000000 limit 0x03ff (256 vectors)",
                               "  (256 empty vectors not shown)"]


def test_devices_and_descriptor_tables_after_setup():
    done = debug("interrupts", "break exit HLT", "continue", "info devices", "info idt",
                 "info gdt")
    assert done.returncode == 0, done.stderr
    out = blocks(done.stdout)
    devices = "\n".join(out["info devices"])
    assert "uart16550" in devices and "LCR 0x03" in devices
    assert "pic-master" in devices and "vector base 0x20" in devices
    assert "counter 0: mode 2, initial count 1193" in devices
    stop = "\n".join(out["continue"])
    assert "HLT (12), breakpoint 1" in stop and "outcome HALT" in stop
    assert any("32-bit interrupt gate" in line for line in out["info idt"])


def test_ctrl_c_interrupts_a_running_guest_and_the_session_goes_on():
    process = subprocess.Popen([*CLI, "debug", str(PROGRAMS / "forever.asm"), "--batch",
                                "--ex", "continue", "--ex", "info exits 1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while process.stdout.readline() != "(trapvisor) continue\n":
            pass
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.startswith("Interrupted (1 exit since boot)\n"
                          "=> 0000:00007c01 <start+1>  eb fe  jmp 0x7c01 <start+1>")
    assert "(trapvisor) info exits 1\n1 exit since boot; the last 1:" in out


def test_readme_debugging_examples_work():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Debugging"):]
    section = section[:section.index("\n## ")]
    commands = [line[2:] for line in section.splitlines() if line.startswith("$ trapvisor debug")]
    assert len(commands) == 3
    runs = [trapvisor(*shlex.split(c)[1:]) for c in commands]
    assert all(done.returncode == 0 for done in runs), [done.stderr for done in runs]
    shown = section[section.index("```text\n") + 8:]
    shown = shown[:shown.index("```")]
    assert shown in runs[0].stdout
    assert "300 exits since boot; the last 4:" in runs[1].stdout
    symbols = blocks(runs[2].stdout)
    assert symbols["continue"][-1] == ("=> 0000:00007c35 <start.next+3>  74 12  "
                                       "je 0x7c49 <start.done>")
    assert symbols["info symbol $pc"] == ["start.next + 3"]


def test_unknown_guest_is_bad_input():
    done = debug("no-such-guest")
    assert done.returncode == 2
    assert "unknown guest" in done.stderr


def test_info_vmcs_under_vtx_shows_the_cpu_and_the_execution_controls():
    """Under vtx the guest-state area is the CPU itself: info vmcs shows what info registers
    shows at the same stop, and the VmxControls in force."""
    done = debug("paging", "break exit CR_ACCESS", "continue",
                 "info registers", "info vmcs",
                 options=("--engine", "vtx", "--exit-on", "cr3,dt"))
    assert done.returncode == 0, done.stderr
    out = blocks(done.stdout)
    registers, vmcs = "\n".join(out["info registers"]), "\n".join(out["info vmcs"])
    cr0 = re.search(r"cr0\s+(0x[0-9a-f]+)", registers).group(1)
    assert int(re.search(r"  cr0\s+(0x[0-9a-f]+)", vmcs).group(1), 16) == int(cr0, 16)
    assert int(cr0, 16) & 1                                   # protected mode by now
    gdtr = re.search(r"  gdtr\s+(.*)", vmcs).group(1)
    assert "limit=0xffff" not in gdtr and "base=0x0," not in gdtr
    assert "VM-execution controls:" in vmcs and "none" not in vmcs.split("controls:")[1][:8]
    assert "cr3_load_exiting" in vmcs and "True" in re.search(r"cr3_load_exiting\s+(\S+)",
                                                              vmcs).group(1)


def test_symbols_are_addresses_and_label_every_address_shown():
    next_ = symbol("hello", "start.next")
    done = debug("hello", "break start.next+3", "continue", "disas start.next 3",
                 "x/4xb message", "x message", "info symbol $pc", "info symbol start", "info symbol 0x500",
                 "break *start.wait", "info breakpoints")
    assert done.returncode == 0, done.stderr
    out = blocks(done.stdout)
    assert out["break start.next+3"] == [f"Breakpoint 1 at {next_ + 3:#x} <start.next+3>"]
    assert out["continue"][0].startswith(f"Breakpoint 1, at {next_ + 3:#x} <start.next+3> (")
    assert out["continue"][1] == (f"=> 0000:{next_ + 3:08x} <start.next+3>  74 12  "
                                  "je 0x7c49 <start.done>")
    assert out["disas start.next 3"] == [
        f"   {next_:#010x} <start.next>    ac                       lodsb al, byte ptr [si]",
        f"   {next_ + 1:#010x} <start.next+1>  84 c0                    test al, al",
        f"=> {next_ + 3:#010x} <start.next+3>  74 12                    je 0x7c49 <start.done>"]
    assert out["x/4xb message"] == [f"{symbol('hello', 'message'):#010x}:  0x48 0x65 0x6c 0x6c"]
    assert out["x message"] == [f"{symbol('hello', 'message'):#010x}:  0x6c6c6548"]
    assert out["info symbol $pc"] == ["start.next + 3"]
    assert out["info symbol start"] == ["start"]
    assert out["info symbol 0x500"] == ["No symbol matches 0x500."]
    assert f"2    break  0     at {symbol('hello', 'start.wait'):#x} <start.wait>" in out[
        "info breakpoints"]


def test_an_unknown_symbol_is_a_one_line_error_with_close_matches(tmp_path: Path):
    done = debug("hello", "break strat", "disas start.nxt 2", "x/4xb COM1", "info symbol")
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert errors == [
        "error: bad address: 'strat' is not a number, $register or symbol of this guest; "
        "did you mean start?",
        "error: bad address: 'start.nxt' is not a number, $register or symbol of this guest; "
        "did you mean start.next, start.wait or start.done?",
        "error: bad address: 'COM1' is not a number, $register or symbol of this guest",
        "error: usage: info symbol ADDR"]
    flat = tmp_path / "flat.bin"
    flat.write_bytes(bytes.fromhex("faf4"))
    done = debug(str(flat), "break start", "disas 0x7c00 1")
    assert done.stderr == ("error: bad address: 'start' is not a number or $register (this "
                           "guest has no symbols)\n")
    assert blocks(done.stdout)["disas 0x7c00 1"] == ["=> 0x00007c00  fa                       cli"]

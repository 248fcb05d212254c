"""The `trapvisor` command as a user runs it: exit statuses, reports, traces, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import guests
from conftest import PROGRAMS, trapvisor
from vmm.pc import elf

BARE_AND_DEFAULT = ("native", "trap")   # the reference machine and the engine `run` picks


def test_console_script_is_installed_and_runs_hello():
    script = shutil.which("trapvisor")
    assert script is not None, "the `trapvisor` console script is not on PATH (pip install -e .)"
    done = subprocess.run([script, "run", "hello"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Hello from a trapvisor guest!" in done.stdout


def test_guests_lists_every_shipped_guest_with_a_description():
    done = trapvisor("guests")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == guests.names()
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_qemu_exit_codes_encode_the_status():
    done = trapvisor("run", "hello", "--qemu-exit-codes")
    assert done.returncode == 1  # (0 << 1) | 1


def test_unknown_guest_lists_the_available_ones():
    done = trapvisor("run", "no-such-guest")
    assert done.returncode == 2
    assert "unknown guest 'no-such-guest'" in done.stderr
    for name in guests.names():
        assert name in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_flag_is_refused_with_a_message():
    done = trapvisor("run", "hello", "--engine", "warp")
    assert done.returncode == 2
    assert "invalid choice: 'warp'" in done.stderr


def test_unknown_benchmark_is_refused():
    done = trapvisor("bench", "--only", "nope")
    assert done.returncode == 2 and "unknown benchmark" in done.stderr


def test_bad_ram_size_is_refused():
    done = trapvisor("run", "hello", "--ram", "lots")
    assert done.returncode == 2
    assert "not a memory size" in done.stderr


def one_line_refusal(done: subprocess.CompletedProcess, usage: bool = False) -> str:
    """Bad input: status 2 and one line saying why, no traceback (a bad flag value follows
    argparse's usage summary, as every flag's does)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    if usage:
        assert lines[0].startswith("usage: ")
        lines = [line for line in lines if line.startswith("trapvisor run: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_source_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path):
    source = tmp_path / "latin1.asm"
    source.write_bytes(b"bits 16\norg 0x7c00\n; caf\xe9\n    hlt\n")
    line = one_line_refusal(trapvisor("run", str(source)))
    assert f"{source}:3:" in line and "UTF-8" in line


def test_an_include_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path):
    (tmp_path / "bad.inc").write_bytes(b"\xff\xfe\n")
    source = tmp_path / "main.asm"
    source.write_text('bits 16\norg 0x7c00\n%include "bad.inc"\n')
    line = one_line_refusal(trapvisor("run", str(source)))
    assert "bad.inc:1:" in line and "UTF-8" in line


def test_a_trace_file_that_cannot_be_created_is_refused_in_one_line(tmp_path: Path):
    line = one_line_refusal(trapvisor("run", "hello", "--trace",
                                      str(tmp_path / "missing" / "exits.jsonl")))
    assert "cannot write the trace" in line and "missing" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e400", "soon"])
def test_a_timeout_must_be_a_positive_finite_number_of_seconds(value):
    line = one_line_refusal(trapvisor("run", "hello", f"--timeout={value}"), usage=True)
    assert "--timeout" in line and repr(value) in line


def test_malformed_assembly_points_at_file_and_line(tmp_path: Path):
    source = tmp_path / "broken.asm"
    source.write_text("bits 16\norg 0x7c00\n    mov ax, 1\n    frobnicate ax, bx\n")
    done = trapvisor("run", str(source))
    assert done.returncode == 2
    assert f"{source}:4:" in done.stderr
    assert "frobnicate ax, bx" in done.stderr
    assert "Traceback" not in done.stderr


def test_flat_binary_is_loaded_like_a_boot_sector(tmp_path: Path):
    """A raw image: DL = 0x80 at entry, loaded at 0x7C00. The code writes DL to 0xF4."""
    image = tmp_path / "boot.bin"
    image.write_bytes(bytes([0x88, 0xD0,        # mov al, dl
                             0xE6, 0xF4,        # out 0xf4, al
                             0xF4]))            # hlt
    done = trapvisor("run", str(image))
    assert done.returncode == 0x80


@pytest.mark.parametrize("engine", BARE_AND_DEFAULT)
def test_triple_fault_ends_with_a_report(engine):
    done = trapvisor("run", str(PROGRAMS / "triplefault.asm"), "--engine", engine)
    assert done.returncode == 3
    assert "triple-fault" in done.stderr
    assert "guest RIP" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("engine", BARE_AND_DEFAULT)
def test_access_outside_ram_ends_with_a_report(engine):
    done = trapvisor("run", str(PROGRAMS / "unmapped.asm"), "--engine", engine)
    assert done.returncode == 3
    assert "outside RAM" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("engine", BARE_AND_DEFAULT)
def test_garbage_code_ends_in_a_defined_state(engine):
    done = trapvisor("run", str(PROGRAMS / "garbage.asm"), "--engine", engine)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert "guest RIP" in done.stderr


@pytest.mark.parametrize("engine", BARE_AND_DEFAULT)
def test_timeout_stops_a_guest_that_never_ends(engine):
    done = trapvisor("run", str(PROGRAMS / "forever.asm"), "--engine", engine, "--timeout", "1")
    assert done.returncode == 3
    assert "--timeout 1 s expired" in done.stderr


def test_max_exits_stops_the_run_and_shows_the_last_exits():
    done = trapvisor("run", "pmode", "--max-exits", "25")
    assert done.returncode == 3
    assert "--max-exits 25 reached" in done.stderr
    assert "25 exits" in done.stderr
    assert "IO_INSTRUCTION" in done.stderr


@pytest.mark.parametrize("engine", BARE_AND_DEFAULT)
def test_hlt_with_interrupts_disabled_ends_the_run(engine):
    done = trapvisor("run", str(PROGRAMS / "halt.asm"), "--engine", engine)
    assert done.returncode == 3
    assert "HLT with interrupts disabled" in done.stderr


def test_stats_summarise_exits_per_reason():
    done = trapvisor("run", "pmode", "--stats")
    assert done.returncode == 0
    assert "VM-EXIT" in done.stderr and "IO_INSTRUCTION" in done.stderr
    assert "GDTR_IDTR_ACCESS" in done.stderr and "CR_ACCESS" in done.stderr


def test_trace_writes_one_json_line_per_exit(tmp_path: Path):
    trace = tmp_path / "exits.jsonl"
    done = trapvisor("run", "hello", "--trace", str(trace))
    assert done.returncode == 0
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    io = [r for r in records if r["reason"] == "IO_INSTRUCTION"]
    assert io and all(r["reason_number"] == 30 for r in io)
    others = [r for r in records if r["reason"] != "IO_INSTRUCTION"]
    assert [(r["reason"], r["detail"]) for r in others] == [("EXCEPTION_NMI", "cli")]
    last = records[-1]
    assert (last["port"], last["direction"], last["value"]) == (0xF4, "out", 0)
    # `out 0xf4, al` is E6 F4: immediate operand (bit 6), 1 byte (bits 2:0 = 0), port in 31:16.
    assert last["qualification"] == (0xF4 << 16) | (1 << 6)
    assert last["insn_bytes"] == "e6f4"
    assert last["handled"] == "OUT 0xf4 <- 0x00 -> debug-exit"
    assert last["outcome"] == "stop"
    thr = [r for r in io if r["port"] == 0x3F8 and r["direction"] == "out"]
    assert thr[1]["handled"] == "OUT 0x3f8 <- 0x48 'H' -> uart16550 THR"
    assert "port 0x3f8" in thr[1]["qualification_decoded"]


@pytest.mark.parametrize("engine", BARE_AND_DEFAULT)
def test_scripted_input_reaches_the_uart_receiver(engine):
    done = trapvisor("run", str(PROGRAMS / "echo.asm"), "--engine", engine,
                     "--input", "Hello, uart!\\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HELLO, UART!\n"


def test_stdin_reaches_the_uart_receiver():
    done = trapvisor("run", str(PROGRAMS / "echo.asm"), "--stdin", input="typed line\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "TYPED LINE\n"


@pytest.mark.parametrize("engine", BARE_AND_DEFAULT)
def test_wall_clock_drives_the_timer(engine):
    """usermode's output does not depend on slice lengths, so it must pass on real time too."""
    done = trapvisor("run", "usermode", "--engine", engine, "--wall-clock", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "both tasks preempted by the timer 5 times ... ok" in done.stdout


def test_a_real_mode_guest_that_runs_off_its_segment_is_reported_honestly():
    """QEMU (the bare machine here) does not check the 64 KiB code-segment limit on sequential
    fetch, so EIP grows past 0xffff until the fetch leaves RAM; the report says so instead of
    showing an impossible real-mode CS:IP as if it were one."""
    done = trapvisor("run", str(PROGRAMS / "runoff.asm"), "--engine", "native", "--ram", "1M")
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "instruction fetch of 1 bytes at guest-physical 0x100000, outside RAM" in done.stderr
    assert "EIP past the CS limit 0xffff" in done.stderr
    assert "0 instructions counted" not in done.stderr


def test_asm_writes_an_elf_with_the_labels(tmp_path: Path):
    output = tmp_path / "hello.elf"
    done = trapvisor("asm", str(guests.path("hello")), "-o", str(output))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert elf.symbols(output)["start.next"] == 0x7C32
    assert elf.load_segments(output.read_bytes())[0] == 0x7C00


def test_asm_errors_are_one_message_and_status_2(tmp_path: Path):
    unwritable = trapvisor("asm", "hello", "-o", str(tmp_path / "missing" / "hello.elf"))
    assert unwritable.returncode == 2
    assert unwritable.stderr == (f"trapvisor: cannot write {tmp_path / 'missing' / 'hello.elf'}: "
                                 "No such file or directory\n")
    source = tmp_path / "bad.asm"
    source.write_text("org 0x7c00\nstart:\n    jmp nowhere\n")
    bad = trapvisor("asm", str(source), "-o", str(tmp_path / "bad.elf"))
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"trapvisor: {source}:3: error: undefined symbol 'nowhere'")
    assert not (tmp_path / "bad.elf").exists()

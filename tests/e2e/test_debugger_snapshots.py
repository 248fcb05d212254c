"""The debugger on snapshots: savevm/loadvm, and goto-exit / reverse-exit restoring the nearest
snapshot (one every CHECKPOINT_EVERY exits) instead of replaying from boot."""
from __future__ import annotations

from conftest import trapvisor
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.debug.debuggee import CHECKPOINT_EVERY, Debuggee, StopKind


def debuggee(name: str, engine: str = "trap", output: list | None = None) -> Debuggee:
    sink = output.append if output is not None else (lambda data: None)
    return Debuggee(lambda observers: MonolithicHypervisor(engine=engine, sink=sink,
                                                            observers=observers),
                    resolve(name, 32 << 20))


def state(d: Debuggee) -> tuple:
    return (d.exit_number, d.registers(), d.vcpu.instructions, d.vm.clock.base_ns,
            [(e.reason, e.rip) for e in d.history])


def test_goto_exit_replays_from_the_nearest_snapshot_to_the_same_state():
    target = 2 * CHECKPOINT_EVERY + 123
    booted = debuggee("usermode")
    booted.goto_exit(target)
    reference = state(booted)
    assert sorted(booted.checkpoints) == [CHECKPOINT_EVERY, 2 * CHECKPOINT_EVERY]
    back = booted.goto_exit(target - 50)
    assert back.kind is StopKind.EXIT and booted.replayed == 73   # from the snapshot at 1000
    booted.goto_exit(target)
    assert booted.replayed == 123 and state(booted) == reference
    booted.close()
    fresh = debuggee("usermode")
    fresh.goto_exit(target - 50)
    fresh.goto_exit(target)
    assert state(fresh) == reference
    fresh.close()


def test_reverse_exit_after_a_snapshot_lands_on_the_previous_exit():
    d = debuggee("usermode")
    d.goto_exit(CHECKPOINT_EVERY + 1)
    stop = d.reverse_exit()
    assert (stop.kind, stop.exit_number, d.replayed) == (StopKind.EXIT, CHECKPOINT_EVERY, 0)
    assert stop.exit is d.history[-1]
    d.close()


def test_savevm_loadvm_come_back_with_the_output_not_repeated():
    output: list[bytes] = []
    d = debuggee("interrupts", output=output)
    d.goto_exit(30)
    d.save("here")
    here, shown = state(d), b"".join(output)
    assert d.cont().kind is StopKind.ENDED
    d.load("here")
    assert state(d) == here and d.ended is None
    ended = d.cont()
    assert ended.kind is StopKind.ENDED and ended.result.status == 0
    d.close()
    assert shown in b"".join(output)


def test_savevm_and_loadvm_in_the_repl():
    done = trapvisor("debug", "usermode", "--batch", "--ex", "goto-exit 40", "--ex", "savevm a",
                     "--ex", "info registers", "--ex", "goto-exit 90", "--ex", "loadvm a",
                     "--ex", "info registers", "--ex", "loadvm b")
    assert done.returncode == 1   # the last command failed
    assert "Saved 'a' at exit #40" in done.stdout
    assert "error: no snapshot named 'b'; saved: a" in done.stderr
    registers = [block for block in done.stdout.split("(trapvisor) ") if
                 block.startswith("info registers")]
    assert len(registers) == 2 and registers[0] == registers[1]

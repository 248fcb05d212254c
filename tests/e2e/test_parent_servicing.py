"""Servicing the parent partition while children run (`--service-parent-at-exit N`): every child
is parked as a snapshot, a new parent process replaces the old one, and every child completes
with the output, exit count and instruction count of an undisturbed run."""
from __future__ import annotations

import re

from conftest import trapvisor

from hypervisors.images import resolve
from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.micro.servicing import run_serviced
from vmm.vm import DEFAULT_RAM

GUESTS = ("interrupts", "usermode", "hog")


def _lines(stdout: str, n: int, name: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"[{n}:{name}] ")]


def test_every_child_completes_as_undisturbed_across_a_parent_restart():
    plain = trapvisor("run", *GUESTS, "--hypervisor", "micro")
    serviced = trapvisor("run", *GUESTS, "--hypervisor", "micro",
                         "--service-parent-at-exit", "100")
    assert plain.returncode == serviced.returncode == 0, serviced.stderr
    for n, name in enumerate(GUESTS, 1):
        assert _lines(serviced.stdout, n, name) == _lines(plain.stdout, n, name)
        assert _lines(plain.stdout, n, name)
    pids = re.search(r"serviced the parent partition \(pid (\d+) -> (\d+)\): restart [\d.]+ ms, "
                     r"total [\d.]+ ms", serviced.stderr)
    assert pids and pids.group(1) != pids.group(2), serviced.stderr
    parked = re.findall(r"  (\S+): parked at exit \d+, paused [\d.]+ ms \(save [\d.]+ ms, "
                        r"restore [\d.]+ ms\), \d+ bytes", serviced.stderr)
    assert parked == list(GUESTS), serviced.stderr


def _results(at_exit: int | None):
    out: list[bytes] = []
    hypervisor = MicroHypervisor(engine="trap", sink=out.append, timeout=120)
    try:
        guests = [(hypervisor.create_partition(name), resolve(name, DEFAULT_RAM))
                  for name in GUESTS]
        if at_exit is None:
            return hypervisor.run_all(guests), None, hypervisor.parent.pid
        pid = hypervisor.parent.pid
        results, figures, _ = run_serviced(hypervisor, guests, at_exit, say=lambda *a, **k: None)
        assert hypervisor.parent.pid != pid and hypervisor.parent.alive()
        return results, figures, pid
    finally:
        hypervisor.close()


def test_exits_and_instructions_continue_exactly():
    undisturbed, _, _ = _results(None)
    results, figures, old_pid = _results(300)
    assert figures.old_pid == old_pid and figures.new_pid != old_pid
    assert [c.name for c in figures.children] == list(GUESTS)   # all still ran at exit 300
    for before, after in zip(undisturbed, results):
        assert (after.state, after.status, after.exits, after.instructions) == (
            before.state, before.status, before.exits, before.instructions)
    assert all(c.bytes > 0 and c.paused_s >= c.save_s for c in figures.children)


def test_a_child_using_vmbus_makes_servicing_refused_in_one_line():
    refused = trapvisor("run", "interrupts", "vmbus-console", "--hypervisor", "micro",
                        "--service-parent-at-exit", "300")
    assert refused.returncode == 2
    assert refused.stderr == ("trapvisor: the parent partition is not serviced: VM 2 "
                              "(vmbus-console) enabled the SynIC or hypercalls (VMBus): snapshots "
                              "do not carry their state\n")


def test_servicing_needs_micro():
    refused = trapvisor("run", "hello", "--service-parent-at-exit", "5")
    assert refused.returncode == 2
    assert refused.stderr == ("trapvisor: --service-parent-at-exit needs --hypervisor micro (and "
                              "no --save or --migrate)\n")

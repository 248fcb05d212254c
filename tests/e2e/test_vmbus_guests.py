"""The enlightened VMBus guests end to end: under the micro hypervisor they reach the parent's
console and block VSPs; under the monolithic one their first hypercall fails and they say so."""
from __future__ import annotations

import pytest

from conftest import run_guest
from vmm.vcpu import RunState

GREETING_END = (b"signalled the channel once with HvCallSignalEvent, "
                b"and the console VSP printed them.\n")


def block_pattern() -> bytes:
    """What vmbus-block writes at sector 8: byte j of the request is 13 j + j // 512."""
    return bytes((j * 13 + (j >> 9)) & 0xFF for j in range(4 * 512))


def test_console_greeting_goes_through_the_vsp_in_one_signal():
    run = run_guest("vmbus-console", "trap", hypervisor="micro")
    assert run.result.state is RunState.EXITED and run.result.status == 0, run.output
    assert b"console channel open, relid 0x11\nHello from an enlightened" in run.output
    assert GREETING_END in run.output
    assert b"sent 322 bytes in 6 packets with 1 signal(s)" in run.output


def test_block_writes_reads_and_verifies_sectors_of_the_parents_disk(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(128 * 512))
    run = run_guest("vmbus-block", "trap", hypervisor="micro", disk=str(disk))
    assert run.result.state is RunState.EXITED and run.result.status == 0, run.text
    assert "GET_CAPACITY: sectors = 128 ... ok" in run.text
    assert "bytes read back equal to the pattern: 2048 ... ok" in run.text
    assert "past the end) refused: status 2 ... ok" in run.text
    assert disk.read_bytes()[8 * 512:12 * 512] == block_pattern()


@pytest.mark.parametrize("name", ["vmbus-console", "vmbus-block"])
def test_under_the_monolithic_hypervisor_the_first_hypercall_fails_clearly(name):
    run = run_guest(name, "trap")
    assert run.result.status == 2
    assert run.text.endswith("vmbus: HvCallPostMessage failed with status 0x0002\n")

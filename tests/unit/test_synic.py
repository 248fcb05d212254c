"""The SynIC over a child's RAM: MSRs, message slots, queueing and EOM, event flags, SINT masks."""
from __future__ import annotations

import pytest

from emu.memory import GuestMemory
from hypervisors.micro.synic import (HV_MESSAGE_HEADER, HV_SYNIC_SINT_MASKED, HV_X64_MSR_EOM,
                                     HV_X64_MSR_SCONTROL, HV_X64_MSR_SIEFP, HV_X64_MSR_SIMP,
                                     HV_X64_MSR_SINT0, HV_X64_MSR_SVERSION, SynIC)

SIMP, SIEFP = 0x5000, 0x6000


@pytest.fixture
def synic():
    memory = GuestMemory(1 << 20)
    kicks = []
    synic = SynIC(memory, lambda: kicks.append(1))
    synic.kicks = kicks
    yield synic
    memory.close()


def enable(synic, sint=2, vector=0x50):
    for msr, value in ((HV_X64_MSR_SIMP, SIMP | 1), (HV_X64_MSR_SIEFP, SIEFP | 1),
                       (HV_X64_MSR_SINT0 + sint, vector), (HV_X64_MSR_SCONTROL, 1)):
        synic.write_msr(msr, value)


def slot(synic, sint=2):
    return HV_MESSAGE_HEADER.unpack(synic.memory.read(SIMP + 256 * sint, 16))


def test_msrs_read_back_and_sints_start_masked(synic):
    assert synic.read_msr(HV_X64_MSR_SINT0 + 3) == HV_SYNIC_SINT_MASKED
    assert synic.read_msr(HV_X64_MSR_SVERSION) == 1
    enable(synic)
    assert synic.read_msr(HV_X64_MSR_SIMP) == SIMP | 1
    assert synic.read_msr(HV_X64_MSR_SCONTROL) == 1
    assert synic.read_msr(HV_X64_MSR_SINT0 + 2) == 0x50


def test_a_message_lands_in_its_slot_and_raises_the_vector(synic):
    enable(synic)
    synic.post(2, 0x100, b"payload")
    assert slot(synic) == (0x100, 7, 0, 0, 0)
    assert synic.memory.read(SIMP + 512 + 16, 7) == b"payload"
    assert synic.has_interrupt() and synic.acknowledge() == 0x50 and not synic.has_interrupt()
    assert synic.kicks


def test_a_busy_slot_queues_sets_pending_and_eom_delivers_the_next(synic):
    enable(synic)
    synic.post(2, 1, b"first")
    synic.post(2, 2, b"second")
    assert slot(synic)[0] == 1 and slot(synic)[2] & 1          # MessagePending
    synic.memory.write_u32(SIMP + 512, 0)                      # the guest frees the slot ...
    synic.write_msr(HV_X64_MSR_EOM, 0)                         # ... and signals EOM
    assert slot(synic)[:3] == (2, 6, 0)
    assert synic.delivered == 2


def test_nothing_is_delivered_until_the_synic_is_enabled(synic):
    synic.post(2, 1, b"early")
    assert synic.memory.read_u32(SIMP + 512) == 0 and not synic.has_interrupt()
    enable(synic)
    assert slot(synic)[0] == 1 and synic.has_interrupt()


def test_a_masked_sint_gets_the_message_but_no_interrupt(synic):
    enable(synic, vector=0x50 | HV_SYNIC_SINT_MASKED)
    synic.post(2, 1, b"quiet")
    assert slot(synic)[0] == 1 and not synic.has_interrupt()


def test_event_flags_interrupt_only_on_a_clear_to_set_transition(synic):
    enable(synic)
    synic.signal(2, 0x11)
    assert synic.memory.read(SIEFP + 512 + 2, 1) == b"\x02"
    assert synic.acknowledge() == 0x50
    synic.signal(2, 0x11)
    assert not synic.has_interrupt()


def test_pages_outside_ram_are_refused_and_counted(synic):
    synic.write_msr(HV_X64_MSR_SIMP, (2 << 20) | 1)
    assert synic.read_msr(HV_X64_MSR_SIMP) == 2 << 20 and synic.rejected_pages == 1


def test_bad_messages_are_refused(synic):
    with pytest.raises(ValueError):
        synic.post(16, 1, b"")
    with pytest.raises(ValueError):
        synic.post(2, 1, bytes(241))

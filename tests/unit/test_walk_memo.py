"""bt's remembered page walks (vmm/engines/walk_memo.py): reused only while a new walk would find
the same frame and set no A/D bit; any change to CR3, CR0.WP or an entry walks again, faults
included. No CPU: page tables in guest RAM, control registers as a plain list."""
import pytest

from emu.memory import GuestMemory
from emu.paging import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    PF,
    PG_A,
    PG_D,
    PG_P,
    PG_RW,
    PG_US,
    READ,
    WRITE,
    Fault,
    LinearMemory,
)
from vmm.engines.walk_memo import WalkMemo

PD, PT, OTHER_PD = 0x10000, 0x11000, 0x12000
LINEAR = 0x00403123            # PDE 1, PTE 3
FRAME, OTHER_FRAME = 0x200000, 0x300000


@pytest.fixture
def machine():
    memory = GuestMemory(16 << 20)
    cr = [CR0_PE | CR0_PG, 0, 0, PD, 0]
    memory.write_u32(PD + 4, PT | PG_P | PG_RW)
    memory.write_u32(PT + 12, FRAME | PG_P | PG_RW)
    yield memory, cr, WalkMemo(LinearMemory(memory, cr))
    memory.close()


def test_a_second_access_reuses_the_walk_and_reaches_the_same_bytes(machine):
    memory, _, memo = machine
    memo.write(LINEAR, b"\x9c\x58")
    assert memory.read(FRAME + 0x123, 2) == b"\x9c\x58"
    assert memo.read(LINEAR, 2) == b"\x9c\x58"       # a READ walk of its own
    assert memo.read(LINEAR + 2, 1) == b"\x00"
    memo.write(LINEAR - 0x100, b"\x01")
    assert memo.walked == 2                           # the write walk, then the read walk
    assert memory.read_u32(PT + 12) & (PG_A | PG_D) == PG_A | PG_D


def test_a_rewritten_pte_walks_again(machine):
    memory, _, memo = machine
    memo.read(LINEAR, 1)
    memory.write_u32(PT + 12, OTHER_FRAME | PG_P | PG_RW | PG_A)
    memory.write(OTHER_FRAME + 0x123, b"\xfa")
    assert memo.read(LINEAR, 1) == b"\xfa" and memo.walked == 2


def test_a_cleared_dirty_bit_walks_again_and_is_set_again(machine):
    memory, _, memo = machine
    memo.write(LINEAR, b"\x00")
    memory.write_u32(PT + 12, memory.read_u32(PT + 12) & ~PG_D)
    memo.write(LINEAR, b"\x00")
    assert memo.walked == 2 and memory.read_u32(PT + 12) & PG_D


def test_another_cr3_or_cr0_wp_walks_again(machine):
    memory, cr, memo = machine
    memo.read(LINEAR, 1)
    memory.write_u32(OTHER_PD + 4, PT | PG_P | PG_RW)
    cr[3] = OTHER_PD
    memo.read(LINEAR, 1)
    cr[0] |= CR0_WP
    memo.read(LINEAR, 1)
    assert memo.walked == 3


def test_a_not_present_page_faults_as_the_walk_does(machine):
    memory, _, memo = machine
    memo.read(LINEAR, 1)
    memory.write_u32(PT + 12, 0)
    with pytest.raises(Fault) as fault:
        memo.physical(LINEAR, READ, False)
    assert fault.value.vector == PF and fault.value.cr2 == LINEAR


def test_a_store_to_a_read_only_user_page_faults(machine):
    memory, _, memo = machine
    memory.write_u32(PD + 4, PT | PG_P | PG_RW | PG_US)
    memory.write_u32(PT + 12, FRAME | PG_P | PG_US)
    assert memo.read(LINEAR, 1, user=True) == b"\x00"
    with pytest.raises(Fault):
        memo.physical(LINEAR, WRITE, True)


def test_with_paging_off_linear_is_physical(machine):
    memory, cr, memo = machine
    cr[0] = CR0_PE
    memo.write(0x5000, b"\x42")
    assert memory.read(0x5000, 1) == b"\x42" and memo.walked == 0

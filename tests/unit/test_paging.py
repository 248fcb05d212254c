"""The guest page walk (emu/paging.py) against the SDM's rules for 32-bit paging, with no CPU:
page tables built in guest RAM, control registers as a plain list."""
import pytest

from emu.memory import GuestMemory
from emu.paging import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_PSE,
    CR4_SMEP,
    FETCH,
    PF_I,
    PF_P,
    PF_U,
    PF_W,
    PG_A,
    PG_D,
    PG_P,
    PG_PS,
    PG_RW,
    PG_US,
    READ,
    WRITE,
    Fault,
    LinearMemory,
    PageWalker,
)

PD, PT = 0x10000, 0x11000
LINEAR = 0x00403123            # PDE 1, PTE 3
FRAME = 0x200000


@pytest.fixture
def machine():
    memory = GuestMemory(16 << 20)
    cr = [CR0_PE | CR0_PG, 0, 0, PD, 0]
    yield memory, cr, PageWalker(memory, cr)
    memory.close()


def map_4k(memory, pde_bits=PG_P | PG_RW | PG_US, pte_bits=PG_P | PG_RW | PG_US):
    memory.write_u32(PD + 4 * 1, PT | pde_bits)
    memory.write_u32(PT + 4 * 3, FRAME | pte_bits)


def test_a_read_translates_and_sets_only_accessed_bits(machine):
    memory, _, walker = machine
    map_4k(memory)
    walk = walker.walk(LINEAR, READ)
    assert walk.frame == FRAME and walk.writable and not walk.dirty
    assert memory.read_u32(PD + 4) & (PG_A | PG_D) == PG_A
    assert memory.read_u32(PT + 12) & (PG_A | PG_D) == PG_A


def test_a_store_sets_dirty_on_the_leaf_only(machine):
    memory, _, walker = machine
    map_4k(memory)
    assert walker.walk(LINEAR, WRITE).dirty
    assert memory.read_u32(PT + 12) & PG_D
    assert not memory.read_u32(PD + 4) & PG_D


def test_touch_false_leaves_the_tables_alone(machine):
    memory, _, walker = machine
    map_4k(memory)
    walker.walk(LINEAR, WRITE, touch=False)
    assert memory.read_u32(PT + 12) & (PG_A | PG_D) == 0


@pytest.mark.parametrize("kind, user, code", [(READ, False, 0), (WRITE, False, PF_W),
                                              (READ, True, PF_U), (WRITE, True, PF_W | PF_U),
                                              (FETCH, False, 0)])
def test_not_present_faults_with_p_clear(machine, kind, user, code):
    memory, _, walker = machine
    map_4k(memory, pte_bits=PG_RW | PG_US)        # PTE not present
    with pytest.raises(Fault) as info:
        walker.walk(LINEAR, kind, user)
    assert (info.value.vector, info.value.error_code, info.value.cr2) == (14, code, LINEAR)


def test_a_not_present_directory_entry_faults_too(machine):
    _, _, walker = machine
    with pytest.raises(Fault) as info:
        walker.walk(LINEAR, WRITE, True)
    assert info.value.error_code == PF_W | PF_U


@pytest.mark.parametrize("level", ["pde", "pte"])
def test_user_access_to_a_supervisor_page_is_a_protection_fault(machine, level):
    memory, _, walker = machine
    bits = {"pde_bits" if level == "pde" else "pte_bits": PG_P | PG_RW}
    map_4k(memory, **bits)
    walker.walk(LINEAR, READ, user=False)          # the supervisor may
    with pytest.raises(Fault) as info:
        walker.walk(LINEAR, READ, user=True)
    assert info.value.error_code == PF_P | PF_U


def test_read_only_page_user_store_faults_supervisor_store_depends_on_wp(machine):
    memory, cr, walker = machine
    map_4k(memory, pte_bits=PG_P | PG_US)
    with pytest.raises(Fault) as info:
        walker.walk(LINEAR, WRITE, user=True)
    assert info.value.error_code == PF_P | PF_W | PF_U
    assert walker.walk(LINEAR, WRITE, user=False).writable      # CR0.WP = 0: allowed
    cr[0] |= CR0_WP
    with pytest.raises(Fault) as info:
        walker.walk(LINEAR, WRITE, user=False)
    assert info.value.error_code == PF_P | PF_W
    assert not walker.walk(LINEAR, READ, user=False).writable


def test_read_only_directory_entry_makes_the_page_read_only(machine):
    memory, _, walker = machine
    map_4k(memory, pde_bits=PG_P | PG_US)
    assert not walker.walk(LINEAR, READ, user=True).writable


def test_4mib_page_needs_cr4_pse(machine):
    memory, cr, walker = machine
    memory.write_u32(PD + 4 * 1, 0x00C00000 | PG_P | PG_RW | PG_PS)
    memory.write_u32(0x00C00000 + 0x10, 0)          # without PSE the PDE points at a table
    with pytest.raises(Fault):
        walker.walk(LINEAR, READ)                   # ... whose entry is not present
    cr[4] |= CR4_PSE
    walk = walker.walk(LINEAR, WRITE)
    assert walk.frame == 0x00C03000 and walk.pte_addr is None
    assert memory.read_u32(PD + 4) & (PG_A | PG_D) == PG_A | PG_D


def test_fetches_have_no_execute_disable_and_id_only_under_smep(machine):
    memory, cr, walker = machine
    map_4k(memory)
    assert walker.walk(LINEAR, FETCH, user=False).frame == FRAME    # no NX in 32-bit paging
    cr[4] |= CR4_SMEP
    with pytest.raises(Fault) as info:
        walker.walk(LINEAR, FETCH, user=False)       # supervisor fetch from a user page
    assert info.value.error_code == PF_P | PF_I
    assert walker.walk(LINEAR, FETCH, user=True).frame == FRAME
    memory.write_u32(PT + 4 * 3, 0)
    with pytest.raises(Fault) as info:
        walker.walk(LINEAR, FETCH, user=True)
    assert info.value.error_code == PF_U | PF_I


def test_linear_memory_is_identity_without_paging(machine):
    memory, cr, _ = machine
    cr[0] = CR0_PE
    assert LinearMemory(memory, cr).translate(0x123456) == 0x123456
    cr[0] |= CR0_PG
    map_4k(memory)
    assert LinearMemory(memory, cr).translate(LINEAR) == FRAME | 0x123

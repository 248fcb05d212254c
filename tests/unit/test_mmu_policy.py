"""The VMM's MMU policy without a CPU: per-access grants and frames mixing code and stores
(vmm/mmu/grants.py), the fill's routing and refusals (vmm/mmu/mmu.py), and shadow paging's
hidden faults and write tracing (vmm/mmu/shadow.py), over guest page tables in RAM."""
from types import SimpleNamespace

import pytest

from emu.memory import GuestMemory
from emu.paging import CR0_PE, CR0_PG, PG_P, PG_RW, PG_US
from emu.tlb import FILL_FETCH, FILL_READ, FILL_WRITE, PROT_R, PROT_W, PROT_X
from vmm.mmu.grants import Grants
from vmm.mmu.mmu import Mmu, Unbacked
from vmm.mmu import shadow
from vmm.mmu.shadow import ShadowMmu

RX, RW, RWX = PROT_R | PROT_X, PROT_R | PROT_W, PROT_R | PROT_W | PROT_X
PD, PT, FRAME, LINEAR, MMIO = 0x10000, 0x11000, 0x20000, 0x00400000, 0xFEE00000


def test_data_pages_get_store_fast_grants():
    flushes = []
    grants = Grants(lambda: flushes.append(1))
    assert grants.grant(FRAME, FILL_WRITE, True, True) == RW
    assert grants.grant(FRAME, FILL_READ, True, True) == RW
    assert grants.grant(FRAME + 0x1000, FILL_READ, True, False) == PROT_R   # clean: no W yet
    assert grants.grant(FRAME + 0x2000, FILL_FETCH, True, True) == RX
    assert flushes == []


def test_a_store_fast_frame_fetched_from_becomes_mixed_and_flushes():
    flushes = []
    grants = Grants(lambda: flushes.append(1))
    grants.grant(FRAME, FILL_WRITE, True, True)
    assert grants.grant(FRAME, FILL_FETCH, True, True) == RWX
    assert flushes == [1]
    assert grants.grant(FRAME, FILL_WRITE, True, True) == RWX    # no more refill ping-pong
    assert grants.grant(FRAME, FILL_READ, False, False) == RX


def test_a_code_frame_stored_to_becomes_mixed_without_flush():
    flushes = []
    grants = Grants(lambda: flushes.append(1))
    grants.grant(FRAME, FILL_FETCH, True, False)
    assert grants.grant(FRAME, FILL_READ, True, True) == RX
    assert grants.grant(FRAME, FILL_WRITE, True, True) == RWX
    assert FRAME in grants.mixed and flushes == []


class FakeCpu:
    """What the MMU asks of the CPU: control registers, CPL, MMIO pages, TLB flush/refusal."""

    def __init__(self):
        self.cr = [CR0_PE | CR0_PG, 0, 0, PD, 0]
        self.cpl = 0
        self.flushes = 0
        self.refused = 0
        self.gdtr = self.ldtr = self.idtr = self.tr = SimpleNamespace(base=0x500, limit=0x37)
        self.raised = []    # error codes of the #PFs the MMU had the CPU raise
        self.tlb = SimpleNamespace(refused_address=lambda: self.refused,
                                   raise_page_fault=self.raised.append)

    def flush_tlb(self):
        self.flushes += 1

    def set_mmu(self, fill):
        self.fill = fill

    def is_mmio_page(self, page):
        return page == MMIO


@pytest.fixture
def vm():
    memory = GuestMemory(1 << 20)
    memory.write_u32(PD + 4, PT | PG_P | PG_RW | PG_US)
    memory.write_u32(PT, FRAME | PG_P | PG_RW | PG_US)
    memory.write_u32(PT + 4, MMIO | PG_P | PG_RW)
    memory.write_u32(PT + 8, 0x200000 | PG_P | PG_RW)      # beyond 1 MiB of RAM
    memory.write_u32(PT + 12, PD | PG_P | PG_RW)           # the directory itself, mapped
    yield SimpleNamespace(memory=memory, cpu=FakeCpu())
    memory.close()


def test_fill_routes_ram_mmio_and_refuses_the_rest(vm):
    mmu = Mmu(vm)
    assert mmu.fill(LINEAR, FILL_WRITE) == (FRAME, RW)
    assert mmu.fill(LINEAR + 0x1000, FILL_READ) == (MMIO, RWX)
    assert mmu.fill(LINEAR + 0x2000, FILL_WRITE) is None
    vm.cpu.refused = LINEAR + 0x2ABC
    assert mmu.take_refusal() == Unbacked(FILL_WRITE, 0x200ABC)
    assert mmu.fill(LINEAR + 0x5000, FILL_READ) is None     # not present: #PF, run goes on
    assert mmu.take_refusal() is None
    vm.cpu.cpl = 3
    assert mmu.fill(LINEAR + 0x1000, FILL_WRITE) is None    # user store to a supervisor page
    assert vm.cpu.raised == [0, 7]
    assert mmu.stats.page_faults == 2


def test_shadow_fills_count_hidden_faults_once_per_context(vm):
    mmu = ShadowMmu(vm)
    mmu.fill(LINEAR, FILL_READ)
    mmu.fill(LINEAR, FILL_READ)                  # served from the shadow
    assert mmu.stats.hidden_faults == 1
    vm.cpu.cr[3] = PD + 0x1000                   # another address space (empty)
    assert mmu.fill(LINEAR, FILL_READ) is None   # the guest's own #PF, not hidden
    vm.cpu.cr[3] = PD
    mmu.fill(LINEAR, FILL_READ)
    assert mmu.stats.hidden_faults == 1          # back: the shadow is still there


def test_a_store_to_a_traced_page_table_drops_its_shadows(vm):
    mmu = ShadowMmu(vm)
    mmu.fill(LINEAR, FILL_READ)
    assert PT in mmu.traced and PD in mmu.traced
    assert mmu.fill(LINEAR + 0x3000, FILL_READ)[1] & PROT_W == 0   # the directory: no write
    assert mmu.fill(LINEAR + 0x3000, FILL_WRITE) == (PD, RW)       # caught, then let through
    assert mmu.traced_writes == 1 and PD not in mmu.traced
    hidden = mmu.stats.hidden_faults
    mmu.fill(LINEAR, FILL_READ)                  # its shadow was derived from the directory
    assert mmu.stats.hidden_faults == hidden + 1


def test_shadows_of_address_spaces_are_bounded_least_recently_used_first(vm, monkeypatch):
    """A guest cycling through many address spaces: the shadows of only MAX_CONTEXTS of them
    are kept (the least recently entered go, with the tracing only they needed)."""
    monkeypatch.setattr(shadow, "MAX_CONTEXTS", 4)
    mmu = ShadowMmu(vm)
    directories = [0x40000 + 0x1000 * n for n in range(10)]
    for directory in directories:
        vm.memory.write_u32(directory + 4, PT | PG_P | PG_RW | PG_US)
        vm.cpu.cr[3] = directory
        assert mmu.fill(LINEAR, FILL_READ) == (FRAME, PROT_R)
    assert len(mmu.contexts) == 4 and mmu.dropped_contexts == 6
    assert set(mmu.traced) == {PT} | set(directories[-4:])        # the dropped ones untraced
    assert len(mmu.traced[PT]) == 4
    vm.cpu.cr[3] = directories[-4]                # kept: served from its shadow
    hidden = mmu.stats.hidden_faults
    mmu.fill(LINEAR, FILL_READ)
    assert mmu.stats.hidden_faults == hidden
    vm.cpu.cr[3] = directories[0]                 # dropped: a hidden fault rebuilds it, and the
    mmu.fill(LINEAR, FILL_READ)                   # least recently used (directories[-3]) goes
    assert mmu.stats.hidden_faults == hidden + 1
    assert directories[-3] not in mmu.traced and directories[-4] in mmu.traced


def test_shadow_entries_per_address_space_are_bounded(vm, monkeypatch):
    monkeypatch.setattr(shadow, "MAX_PAGES", 2)
    mmu = ShadowMmu(vm)
    for n in range(3):
        vm.memory.write_u32(PT + 0x40 + 4 * n, FRAME | PG_P | PG_RW | PG_US)
        mmu.fill(LINEAR + 0x10000 + 0x1000 * n, FILL_READ)
    (shadows,) = mmu.contexts.values()
    assert len(shadows) == 1 and mmu.dropped_contexts == 1       # started afresh at the third


def test_a_host_store_into_a_page_table_drops_its_shadows(vm):
    """A store the VMM makes into guest RAM (a debugger's write, DMA) over a live page table:
    the shadows derived from it go, so the guest's INVLPG finds the new entry."""
    mmu = ShadowMmu(vm)
    mmu.attach()
    assert mmu.fill(LINEAR, FILL_READ) == (FRAME, PROT_R)
    vm.memory.write(PT, (FRAME + 0x3000 | PG_P | PG_RW | PG_US).to_bytes(4, "little"))
    assert PT not in mmu.traced
    assert mmu.fill(LINEAR, FILL_READ) == (FRAME + 0x3000, PROT_R)
    assert mmu.stats.hidden_faults == 2
    vm.memory.write_u32(FRAME + 0x3000, 7)        # not a page table: nothing to drop
    assert mmu.fill(LINEAR, FILL_READ) == (FRAME + 0x3000, PROT_R)
    assert mmu.stats.hidden_faults == 2

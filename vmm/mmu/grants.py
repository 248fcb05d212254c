"""What a TLB fill grants, per access: the policy that makes guest stores as cheap as loads.

QEMU (as Unicorn builds it) clears a writable TLB entry's notdirty flag, the slow path every store
takes, only on entries without execute permission, and never sets it again when code is later
translated from the page (its dirty-memory bitmap is stubbed). So a fill grants what the access
needs: a fetch read+execute, a store read+write, a load read (plus write when the guest entry is
writable and already dirty, as the hardware would cache it). Frames are remembered by use:

- a frame that was granted write without execute and is then fetched from becomes *mixed*, and
  the whole TLB is flushed at once: the store-fast entries of every alias of it go, so that QEMU
  notices stores to code it has now translated (self-modifying and run-time loaded code);
- a frame already fetched from that is then stored to becomes mixed too;
- a mixed frame is granted everything the guest allows on every fill (stores there pay the
  notdirty check again, and the fills stop: no fetch/store refill ping-pong).
"""
from __future__ import annotations

from emu.tlb import FILL_FETCH, FILL_WRITE, PROT_R, PROT_W, PROT_X

RX, RW, RWX = PROT_R | PROT_X, PROT_R | PROT_W, PROT_R | PROT_W | PROT_X


class Grants:
    """Per-frame grant decisions; ``flush`` is called when store-fast entries must go."""

    def __init__(self, flush):
        self._flush = flush
        self.fetched: set[int] = set()   # frames code was fetched from
        self.written: set[int] = set()   # frames granted write without execute
        self.mixed: set[int] = set()     # frames holding both: granted everything

    def grant(self, frame: int, access: int, writable: bool, dirty: bool) -> int:
        """UC_PROT_* bits for a fill of ``frame``; ``writable``/``dirty`` describe the guest's
        entry after the access (a store has already set D)."""
        storable = writable and dirty
        if frame in self.mixed:
            return RWX if storable else RX
        if access == FILL_FETCH:
            if frame in self.written:
                return self._mix(frame, storable, flush=True)
            self.fetched.add(frame)
            return RX
        if access == FILL_WRITE:
            if frame in self.fetched:
                return self._mix(frame, True, flush=False)
            self.written.add(frame)
            return RW
        if frame in self.fetched:
            return RX
        if storable:
            self.written.add(frame)
            return RW
        return PROT_R

    def _mix(self, frame: int, storable: bool, flush: bool) -> int:
        self.mixed.add(frame)
        self.fetched.discard(frame)
        self.written.discard(frame)
        if flush:
            self._flush()
        return RWX if storable else RX

    def forget(self) -> None:
        """Drop what is known about every frame (a restored snapshot's RAM is new)."""
        self.fetched.clear()
        self.written.clear()
        self.mixed.clear()

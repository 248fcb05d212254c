"""Translation-time code scanning, shared by the bt and vtx engines: every block of guest code is
decoded before it first runs, and the instructions the engine must intercept become *sites*.

Unicorn reports each block it translates (UC_HOOK_EDGE_GENERATED fires at translation, never per
execution). A block holding a site that is not armed yet is stopped before its first instruction
runs; the engine then arms the site as a Unicorn exit (a stop before that instruction) and
resumes. A callout site can instead be hooked (a code hook bounded to its address: the engine
carries the instruction out inside the run), and one whose instruction faults into the VMM
where it runs (``traps``) needs neither. Code written at run time, and code the guest rewrites,
is covered because QEMU invalidates a translated block when the guest writes to its bytes: its
re-translation passes through the scanner again, which drops the sites whose bytes are gone and
adds the new ones. Unicorn re-translates unchanged blocks too (after every run, the block in
front of each exit); with ``cache`` their decoding is a lookup.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from emu.cpu import CS, Cpu
from emu.disasm import Disassembler, Insn

PAGE = 0x1000
MAX_HOOKED = 4          # each code hook slows every counted instruction (see Hooks.hook_code_at)
SCAN_CACHE_BLOCKS = 4096


class SiteKind(enum.Enum):
    """How a scanned sensitive instruction is translated."""
    CALLOUT = "callout"   # stop before it; the VMM emulates it on virtual state
    INLINE = "inline"     # runs in place on virtual state, no exit at all
    IO = "io"             # the CPU's I/O hook calls the device model synchronously
    UNTRAPPED = "untrapped"  # trap-and-emulate only: runs on real state, the VMM never sees it
    WINDOW = "window"     # may set the real IF: a stop only while an interrupt is held


# Instructions that can set EFLAGS.IF (and so open the interrupt window) when they run on the
# real CPU; while an interrupt waits for IF, the CPU stops in front of them (see hold_window).
IF_SETTERS = frozenset(("sti", "popf", "popfd", "popfw", "iret", "iretd", "iretw"))


@dataclass
class Site:
    """One translated instruction: where, its original bytes, how it is translated, how often."""
    linear: int
    insn: Insn
    kind: SiteKind
    hits: int = 0
    plan: object = None
    traps: bool = False          # faults into the VMM where it runs: no stop, no hook
    hook: int | None = None      # the code hook that carries it out inside the run

    @property
    def raw(self) -> bytes:
        return self.insn.raw


Classifier = Callable[[Insn], "SiteKind | None"]
Callout = Callable[[int], "int | None"]


class CodeScanner:
    """Decodes translated blocks, keeps the site table, arms callout sites as CPU exits."""

    def __init__(self, cpu: Cpu, fetch: Callable[[int, int], bytes], disasm: Disassembler,
                 classify: Classifier, wanted: Callable[[], bool], owner: str,
                 traps: Callable[[Insn], bool] | None = None, cache: bool = False):
        """``traps(insn)``: the instruction faults into the VMM in the code being scanned, so
        its callout site needs no stop. ``cache``: classification depends only on the bytes, the
        address, the code segment's base and size and the CPU mode, so rescans are lookups."""
        self.cpu = cpu
        self.traps = traps
        self._cache: dict[tuple, list[tuple[int, Insn, SiteKind, bool]]] | None = (
            {} if cache else None)
        self.lookups = 0       # blocks whose scan came out of the cache
        self.fetch = fetch
        self.disasm = disasm
        self.classify = classify
        self.wanted = wanted
        self.owner = owner
        self.sites: dict[int, Site] = {}
        self.pages: set[int] = set()
        self.blocks = 0
        self.invalidated = 0   # sites dropped because their bytes changed
        self.rewritten = 0     # blocks translated again with different bytes (code written)
        self._scanned: dict[int, bytes] = {}
        self._armed: frozenset[int] = frozenset()
        self._window_held = False
        self.hooked = 0

    def start(self) -> None:
        self.cpu.watch_translations(self.on_translate)

    # ----- translation time ---------------------------------------------------------------------
    def on_translate(self, linear: int, size: int) -> None:
        """A block [linear, linear+size) was translated and is about to run for the first time."""
        if not self.wanted():
            return
        self.blocks += 1
        found = self.scan(linear, size)
        stale = [a for a in self.sites if linear <= a < linear + size and a not in found]
        for address in stale:
            self._forget(self.sites.pop(address))
            self.invalidated += 1
        for address, site in found.items():
            known = self.sites.get(address)
            if known is None or known.raw != site.raw:
                if known is not None:
                    self._forget(known)
                self.sites[address] = site
        if self._needs_arming():
            self.cpu.stop()  # the block is abandoned before its first instruction runs

    def scan(self, linear: int, size: int) -> dict[int, Site]:
        """Decode [linear, linear+size) under the current code segment and classify each
        instruction; undecodable bytes end the scan (the CPU will raise #UD there itself)."""
        code = self.fetch(linear, size)
        old = self._scanned.get(linear, code)  # a re-translation may end at a new exit
        if old[:len(code)] != code[:len(old)]:
            self.rewritten += 1
        self._scanned[linear] = code
        self.pages.update(range(linear & ~(PAGE - 1), linear + max(size, 1), PAGE))
        cpu = self.cpu
        key = (linear, cpu.segs[CS].base, cpu.code_bits, cpu.protected, cpu.vm86, code)
        cache = self._cache
        entries = cache.get(key) if cache is not None else None
        if entries is None:
            entries = self._decode(linear, code, key[1], key[2])
            if cache is not None:
                if len(cache) >= SCAN_CACHE_BLOCKS:
                    cache.clear()
                cache[key] = entries
        else:
            self.lookups += 1
        return {address: Site(address, insn, kind, traps=traps)
                for address, insn, kind, traps in entries}

    def _decode(self, linear: int, code: bytes, cs_base: int, bits: int) -> list:
        entries = []
        offset = 0
        while offset < len(code):
            insn = self.disasm.decode(code[offset:], (linear + offset - cs_base) & 0xFFFFFFFF, bits)
            if insn is None:
                break
            kind = self.classify(insn)
            if kind is not None:
                traps = (kind is SiteKind.CALLOUT and self.traps is not None
                         and self.traps(insn))
                entries.append((linear + offset, insn, kind, traps))
            offset += insn.size
        return entries

    # ----- arming -------------------------------------------------------------------------------
    def _stops(self) -> frozenset[int]:
        """Callout sites, and while an interrupt is held the sites that can set IF on the real
        CPU (callouts among them are emulated, and the emulator opens the window itself)."""
        return frozenset(a for a, s in self.sites.items() if (
            s.kind is SiteKind.CALLOUT and not s.traps and s.hook is None) or (
            self._window_held and s.insn.mnemonic in IF_SETTERS))

    def _needs_arming(self) -> bool:
        return not self._stops() <= self._armed

    def arm(self) -> bool:
        """Make the CPU stop at every site that must stop (and no longer at dropped ones). True
        if the set changed, i.e. a scan stopped the run and it must simply be resumed."""
        stops = self._stops()
        if stops == self._armed:
            return False
        self._armed = stops
        self.cpu.set_exits(stops, owner=self.owner)
        return True

    def hold_window(self, held: bool) -> None:
        """An interrupt waits for IF (or no longer does): stop in front of the instructions that
        could set IF, so the vCPU sees the window open with no per-block hook."""
        if held != self._window_held:
            self._window_held = held
            self.arm()

    def window_site_at(self, linear: int) -> bool:
        """The CPU stopped in front of an armed IF-setting instruction that runs on the real CPU."""
        site = self.sites.get(linear)
        return (self._window_held and site is not None and site.kind is not SiteKind.CALLOUT
                and site.insn.mnemonic in IF_SETTERS and linear in self._armed)

    @property
    def window_held(self) -> bool:
        return self._window_held

    # ----- callouts inside the run --------------------------------------------------------------
    def hook(self, site: Site, callout: Callout) -> bool:
        """Carry the callout site out inside the run from now on (a code hook on its address
        calling ``callout``) and no longer stop there. At most MAX_HOOKED sites are hooked: a
        site that has run more often than the least-run hooked one takes its hook."""
        if site.hook is not None:
            return False
        if self.hooked >= MAX_HOOKED:
            coldest = min((s for s in self.sites.values() if s.hook is not None),
                          key=lambda s: s.hits)
            if coldest.hits >= site.hits:
                return False
            self._forget(coldest)  # a stop again: the hotter site takes its hook
        site.hook = self.cpu.hook_code_at(site.linear, callout)
        self.hooked += 1
        self.arm()
        return True

    def _forget(self, site: Site) -> None:
        """A dropped site's code hook goes with it."""
        if site.hook is not None:
            self.cpu.unhook_code(site.hook)
            site.hook = None
            self.hooked -= 1

    @property
    def armed(self) -> frozenset[int]:
        """The callout sites the CPU currently stops at."""
        return self._armed

    def callout_at(self, linear: int) -> Site | None:
        site = self.sites.get(linear)
        return site if site is not None and site.kind is SiteKind.CALLOUT else None

    def revalidate(self, site: Site) -> bool:
        """At a callout: are the bytes in memory still the ones scanned? If not, forget the
        site (the re-translated block will be scanned afresh) and disarm it."""
        if self.fetch(site.linear, site.insn.size) == site.raw:
            return True
        if self.sites.get(site.linear) is site:
            del self.sites[site.linear]
            self._forget(site)
        self.invalidated += 1
        self.arm()
        return False

    def table(self) -> list[Site]:
        return [self.sites[a] for a in sorted(self.sites)]

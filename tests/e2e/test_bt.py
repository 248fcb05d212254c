"""The binary-translation engine: code is scanned before it runs, sensitive instructions become
sites (callout / inline / io), run-time and self-modifying code is rescanned, and the guest reads
its original bytes."""
from __future__ import annotations

from conftest import PROGRAMS, run_guest
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.observers import ExitCallback
from vmm.engines.scanner import SiteKind
from vmm.vcpu import RunState

SELFMOD = PROGRAMS / "selfmod.asm"


def booted(spec: str) -> MonolithicHypervisor:
    hypervisor = MonolithicHypervisor(engine="bt", timeout=60)
    hypervisor.run(resolve(str(spec), hypervisor.vm.memory.size))
    return hypervisor


def test_run_time_and_rewritten_code_is_translated_like_native():
    native, trap, bt = (run_guest(SELFMOD, e) for e in ("native", "trap", "bt"))
    assert bt.result.state is RunState.EXITED, bt.result.report()
    assert bt.output == native.output
    assert "MOV AX,CS = 0x0008" in bt.text
    assert "0x00aa 0x0008" in bt.text          # rescanned after the rewrite
    assert "0x00aa 0x0009" in trap.text        # trap cannot see MOV AX,CS at all


def test_guest_reads_its_original_bytes():
    text = run_guest(SELFMOD, "bt").text
    assert "SMSW, MOV AX,SS bytes = 0xe0010f66 0xb0d08c66" in text


def test_site_table_records_kind_bytes_and_hits():
    hypervisor = booted("sensitive")
    try:
        engine = hypervisor.vcpu.engine
        sites = engine.scanner.table()
        by_text = {str(site.insn): site for site in sites}
        smsw = next(s for t, s in by_text.items() if t.startswith("smsw"))
        assert smsw.kind is SiteKind.CALLOUT and smsw.hits >= 1
        assert smsw.raw == engine.fetch(smsw.linear, len(smsw.raw))
        assert any(s.kind is SiteKind.INLINE and str(s.insn) == "cli" for s in sites)
        assert any(s.kind is SiteKind.IO and s.hits > 0 for s in sites)
        report = engine.translation_report()
        assert f"{smsw.linear:#013x}  {smsw.raw.hex(' ')}" in report
        assert "callout" in report and "inline" in report
    finally:
        hypervisor.close()


def test_rewritten_site_is_invalidated_and_rescanned():
    hypervisor = booted(SELFMOD)
    try:
        scanner = hypervisor.vcpu.engine.scanner
        assert scanner.rewritten >= 1
        rewritten = [s for s in scanner.table() if str(s.insn) == "mov ax, cs"]
        # the copy at 0x20000 (the original is never run) and the rewritten routine
        assert len(rewritten) == 2 and 0x20000 in {s.linear for s in rewritten}
    finally:
        hypervisor.close()


def cli_sti_exits(engine: str) -> list:
    exits = []
    run = run_guest("interrupts", engine, observers=[ExitCallback(lambda e, o: exits.append(e))])
    assert run.result.ok, run.result.report()
    return [e for e in exits if e.detail in ("cli", "sti")]


def test_cli_sti_in_kernel_code_cause_no_exit():
    """The interrupts guest toggles IF in protected-mode kernel code: trap exits on each CLI/STI,
    bt only on the boot sector's real-mode CLI (virtual-8086 code is translated by callouts)."""
    assert len(cli_sti_exits("trap")) > 2
    assert len(cli_sti_exits("bt")) <= 1

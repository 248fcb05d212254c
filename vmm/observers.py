"""Observers around exit dispatch: per-reason statistics (in the spirit of `perf kvm stat report`),
a JSON-lines exit trace, and a callback adapter for scripts. They watch exits; never handle them.

When several VMs share the machine (vmm/cpusched), each VM's ``Vm.identity`` is its (id, name):
the statistics then keep a table per VM beside the total, and every trace record names its VM.
"""
from __future__ import annotations

import json
from collections import defaultdict

from vmm.exit_decoding import handled_summary, qualification


class ExitStats:
    """Samples and handling time per exit reason, plus a breakdown by emulated instruction; with
    several VMs, the same per VM in ``per_vm`` (keyed by the VM's (id, name))."""

    def __init__(self):
        self.samples: dict[str, list[int]] = defaultdict(list)
        self.details: dict[str, int] = defaultdict(int)
        self.per_vm: dict[tuple[int, str], ExitStats] = {}
        self.engine = None

    def on_exit(self, vcpu, exit) -> None:
        self.engine = vcpu.engine

    def on_entry(self, vcpu, exit, outcome) -> None:
        self._count(exit)
        identity = vcpu.vm.identity
        if identity is not None:
            if identity not in self.per_vm:
                self.per_vm[identity] = ExitStats()
            self.per_vm[identity]._count(exit)

    def _count(self, exit) -> None:
        self.samples[exit.reason.name].append(exit.duration_ns)
        if exit.detail:
            mnemonic = exit.detail.split(" ")[0]
            what = exit.detail if mnemonic == "mov" else mnemonic  # which CR or segment register
            self.details[f"{exit.reason.name}: {what}"] += 1

    def report(self) -> str:
        """The table for all VMs, then one per VM when several ran."""
        tables = [self._table("all VMs")]
        tables += [self.per_vm[key]._table(f"VM {key[0]} ({key[1]})")
                   for key in sorted(self.per_vm)]
        if self.engine is not None:
            tables.append(self.engine.mmu_report())
            tables += [text for text in (self.engine.translation_report(),
                                         self.engine.apic_report()) if text]
        return "\n\n".join(tables)

    def _table(self, which: str) -> str:
        total = sum(len(v) for v in self.samples.values())
        total_ns = sum(sum(v) for v in self.samples.values()) or 1
        lines = [f"Analyze events for {which}, all VCPUs:", "",
                 f"{'VM-EXIT':>22} {'Samples':>9} {'Samples%':>9} {'Time%':>7} "
                 f"{'Min Time':>10} {'Max Time':>10} {'Avg time':>10}", ""]
        for name, times in sorted(self.samples.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"{name:>22} {len(times):>9} {100 * len(times) / total:>8.2f}% "
                         f"{100 * sum(times) / total_ns:>6.2f}% {min(times) / 1e3:>8.2f}us "
                         f"{max(times) / 1e3:>8.2f}us {sum(times) / len(times) / 1e3:>8.2f}us")
        lines += ["", f"Total Samples:{total}, Total events handled time:{total_ns / 1e3:.2f}us."]
        if self.details:
            lines += ["", "By instruction:"]
            lines += [f"  {k:<40} {v:>9}" for k, v in sorted(self.details.items(),
                                                               key=lambda kv: -kv[1])]
        return "\n".join(lines)


class JsonTrace:
    """One JSON object per exit, written when the guest is re-entered."""

    def __init__(self, stream):
        self.stream = stream

    def on_exit(self, vcpu, exit) -> None:
        pass

    def on_entry(self, vcpu, exit, outcome) -> None:
        record = exit.to_json()
        if vcpu.vm.identity is not None:
            record["vm_id"], record["vm_name"] = vcpu.vm.identity
        record["qualification_decoded"] = qualification(exit)
        record["handled"] = handled_summary(vcpu.vm, exit)
        record["outcome"] = outcome.value
        self.stream.write(json.dumps(record) + "\n")


class ExitCallback:
    """Calls ``fn(exit, outcome)`` after every exit was handled: the Python API for scripts.

        MonolithicHypervisor(observers=[ExitCallback(lambda exit, outcome: print(exit.describe()))])
    """

    def __init__(self, fn):
        self.fn = fn

    def on_exit(self, vcpu, exit) -> None:
        pass

    def on_entry(self, vcpu, exit, outcome) -> None:
        self.fn(exit, outcome)

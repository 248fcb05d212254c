"""The differential check of one case: every engine against native (Popek and Goldberg's
equivalence), and every VMM failure on its own.

bt and vtx must equal native. trap must too, except where its fidelity report (the audit of
sensitive instructions that do not fault at ring 1) lists a site in an op at or before the first
difference: from there on, trap ran on real state by design. Differences that are bugs already
known (fuzz/known.py) are reported as known, with their reason; the rest are failures.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fuzz.known import KnownDivergence, match_known
from fuzz.outcome import Outcome, Run
from fuzz.program import StructuredCase
from fuzz.records import Record, parse

REFERENCE = "native"
FIDELITY_SITE = re.compile(r"\s+0x([0-9a-f]+)\s")


@dataclass
class Divergence:
    engine: str
    what: str                          # "vmm failure", "outcome" or "output"
    detail: str
    op: int | None = None              # the op where the runs part (structured cases)
    op_text: str = ""
    explained_by: str = ""             # "trap fidelity: ..." (expected by design)
    known: KnownDivergence | None = None
    records: tuple[Record | None, Record | None] = (None, None)   # native's, the engine's

    @property
    def expected(self) -> bool:
        return bool(self.explained_by)

    @property
    def failure(self) -> bool:
        return not self.expected and self.known is None

    def describe(self) -> str:
        where = f" in op {self.op} ({self.op_text.strip().replace(chr(10), '; ')})" \
            if self.op is not None else ""
        tail = (f" [expected: {self.explained_by}]" if self.expected else
                f" [known: {self.known.name}]" if self.known else " [NEW]")
        return f"{self.engine}: {self.what}{where}: {self.detail}{tail}"


def judge(case, runs: dict[str, Run]) -> list[Divergence]:
    """Every divergence of one case, each classified as expected, known or new."""
    reference = runs[REFERENCE]
    divergences = []
    for engine, run in runs.items():
        if run.outcome.vmm_failure:
            divergence = vmm_failure(case, run)
        elif engine != REFERENCE:
            divergence = compare(case, reference, run)
        else:
            continue
        if divergence is not None:
            divergence.known = match_known(divergence, run.message)
            divergences.append(divergence)
    return divergences


def vmm_failure(case, run: Run) -> Divergence:
    lines = run.message.strip().splitlines() or [""]
    # a traceback names its exception last; the full text stays in the run's message
    summary = lines[-1] if run.outcome is Outcome.CRASH else lines[0]
    divergence = Divergence(run.engine, "vmm failure", f"{run.outcome.value}: {summary}")
    if isinstance(case, StructuredCase):
        records = parse(run.output)
        divergence.op = culprit(case, records, records)
        divergence.op_text = case.ops[divergence.op].text if divergence.op is not None else ""
    return divergence


def compare(case, reference: Run, run: Run) -> Divergence | None:
    same_output = reference.output == run.output
    if reference.outcome.unfinished or run.outcome.unfinished:
        shorter, longer = sorted((reference.output, run.output), key=len)
        if longer.startswith(shorter) and (reference.outcome.unfinished
                                           and run.outcome.unfinished):
            return None
    elif reference.verdict == run.verdict and same_output:
        return None
    what = "output" if reference.verdict == run.verdict else "outcome"
    detail = (f"native {reference.verdict}, {run.engine} {run.verdict}"
              if what == "outcome" else "the outputs differ")
    divergence = Divergence(run.engine, what, detail)
    if isinstance(case, StructuredCase):
        ours, theirs = parse(reference.output), parse(run.output)
        divergence.op = culprit(case, ours, theirs)
        divergence.op_text = case.ops[divergence.op].text if divergence.op is not None else ""
        divergence.detail += first_difference(ours, theirs, run.engine)
        divergence.records = first_different_records(ours, theirs)
        divergence.explained_by = trap_fidelity(case, run, divergence.op)
    return divergence


def culprit(case: StructuredCase, ours: list[Record], theirs: list[Record]) -> int | None:
    """The op in which the two record streams first part (or where the shorter one stopped)."""
    if not case.ops:
        return None
    index = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a.raw != b.raw),
                 min(len(ours), len(theirs)))
    candidates = [r.op for r in (ours[index:index + 1] + theirs[index:index + 1]) if r.op >= 0]
    if candidates:
        return min(candidates)
    common = (ours if len(ours) <= len(theirs) else theirs)[:index]
    if not common:
        return 0
    last = common[-1]
    if last.op < 0:
        return len(case.ops) - 1
    return min(last.op + (1 if chr(last.tag) == "C" else 0), len(case.ops) - 1)


def first_different_records(ours: list[Record], theirs: list[Record]):
    index = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a.raw != b.raw),
                 min(len(ours), len(theirs)))
    return (ours[index] if index < len(ours) else None,
            theirs[index] if index < len(theirs) else None)


def first_difference(ours: list[Record], theirs: list[Record], engine: str) -> str:
    for a, b in zip(ours, theirs):
        if a.raw != b.raw:
            return f"\n    native: {a.describe()}\n    {engine}: {b.describe()}"
    if len(ours) != len(theirs):
        longer, name = (ours, "native") if len(ours) > len(theirs) else (theirs, engine)
        return f"\n    only {name} goes on: {longer[min(len(ours), len(theirs))].describe()}"
    return ""


def trap_fidelity(case: StructuredCase, run: Run, op: int | None) -> str:
    """Why trap may differ here: a sensitive instruction it cannot see ran in an op at or
    before the first difference (the sites of its fidelity report, mapped to ops)."""
    if run.engine != "trap" or op is None:
        return ""
    starts = case.op_addresses()
    for line in run.fidelity.splitlines():
        site = FIDELITY_SITE.match(line)
        owner = op_containing(starts, int(site.group(1), 16)) if site else None
        if owner is not None and owner <= op:
            return f"trap fidelity: {' '.join(line.split())}"
    return ""


def op_containing(starts: list[int], address: int) -> int | None:
    """The op whose code holds ``address`` (None: the runtime, not an op)."""
    if not starts or address < starts[0]:
        return None
    return max(i for i, start in enumerate(starts) if start <= address)

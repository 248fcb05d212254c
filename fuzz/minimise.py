"""Minimising a failing case to a small reproducer: delta debugging (remove chunks, halving their
size down to one) over a structured case's ops or a random case's bytes, keeping a candidate only
if it still shows the same divergence: same engine, kind, op text and verdict (or exception),
and the same known entry, if any. Each trial runs only native and the diverging engine."""
from __future__ import annotations

from fuzz.pool import Bounds, Pool
from fuzz.program import StructuredCase
from fuzz.verdict import Divergence, judge

MAX_TRIALS = 400


def signature(divergence: Divergence) -> tuple:
    """What a smaller case must still show to count as the same bug: for a VMM failure its
    outcome and exception type ('vmm-error: IndexError'), for an outcome the engine's verdict."""
    first = divergence.detail.split("\n")[0]
    head = first.split(", ")[-1] if divergence.what == "outcome" else ": ".join(first.split(": ")[:2])
    return divergence.engine, divergence.what, divergence.op_text, head


def minimise(pool: Pool, case, divergence: Divergence, bounds: Bounds):
    """The smallest case found that still shows ``divergence`` (the case itself at worst)."""
    engines = ["native"] if divergence.engine == "native" else ["native", divergence.engine]
    wanted = signature(divergence)
    trials = 0

    def still_fails(candidate) -> bool:
        nonlocal trials
        trials += 1
        try:
            image = candidate.image()
        except Exception:          # an op that no longer assembles alone: not a candidate
            return False
        runs = {engine: pool.run(engine, image, bounds) for engine in engines}
        return any(signature(d) == wanted and d.known == divergence.known
                   and d.expected == divergence.expected for d in judge(candidate, runs))

    items = list(case.ops if isinstance(case, StructuredCase) else case.code)
    rebuild = ((lambda parts: case.with_ops(parts)) if isinstance(case, StructuredCase)
               else (lambda parts: case.with_code(bytes(parts))))
    chunk = max(1, len(items) // 2)
    while chunk >= 1 and trials < MAX_TRIALS:
        start, removed = 0, False
        while start < len(items) and trials < MAX_TRIALS:
            candidate_items = items[:start] + items[start + chunk:]
            if candidate_items and still_fails(rebuild(candidate_items)):
                items, removed = candidate_items, True
            else:
                start += chunk
        if not removed:
            chunk //= 2
    return rebuild(items)


"""Divergences already known and not fixed yet: each names the engines it affects, matches the
op where the runs part (a regular expression over the op's assembly) and/or the engine's run
message, and says why it happens. A divergence matched here is reported as known, not as a
failure; when a fix lands its entry must go (tests/fuzz/ holds a reproducer per entry, whose
test fails once the divergence is gone). Match precisely: a broad pattern hides new bugs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDivergence:
    name: str
    engines: frozenset[str]
    reason: str
    op: str = ""               # a regular expression searched in the culprit op's text
    message: str = ""          # a regular expression searched in the engine's run message

    def matches(self, engine: str, op_text: str, message: str) -> bool:
        return (engine in self.engines
                and (not self.op or re.search(self.op, op_text, re.MULTILINE) is not None)
                and (not self.message or re.search(self.message, message) is not None))


def known(name: str, engines: str, reason: str, op: str = "", message: str = "") -> KnownDivergence:
    return KnownDivergence(name, frozenset(engines.split()), reason, op, message)


KNOWN: tuple[KnownDivergence, ...] = (
)


def match_known(divergence, run) -> KnownDivergence | None:
    return next((entry for entry in KNOWN
                 if entry.matches(divergence.engine, divergence.op_text, run.message)), None)

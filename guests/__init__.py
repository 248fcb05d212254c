"""The shipped guest kernels: assembly sources (package data) and their one-line descriptions."""
from __future__ import annotations

from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in GUEST_DIR.glob("*.asm"))


def path(name: str) -> Path:
    return GUEST_DIR / f"{name}.asm"


def describe(name: str) -> str:
    """The guest's first comment line, e.g. '; hello: ...' -> '...'."""
    for line in path(name).read_text().splitlines():
        text = line.strip().lstrip(";").strip()
        if text:
            return text.split(":", 1)[1].strip() if text.startswith(f"{name}:") else text
    return ""

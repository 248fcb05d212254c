"""A per-user cache of where one Unicorn build keeps QEMU's CPU state (qemu_state.Layout), so the
memory scan that finds it runs once per build instead of once per CPU.

The key is the Unicorn shared library's path, size and modification time; the file is JSON in
``$XDG_CACHE_HOME/trapvisor/`` (``~/.cache/trapvisor/``), replaced atomically. Nothing read from it
is trusted: the caller verifies every layout against the running Unicorn before use, and an
unreadable, corrupt or unwritable cache is the same as an empty one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from unicorn.unicorn_py3 import unicorn as binding

FILE_NAME = "qemu-state-layout.json"
FIELDS = ("pointer", "env", "dr", "counter", "halted")


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trapvisor" / FILE_NAME


def library_key() -> str | None:
    """'path size mtime_ns' of the loaded Unicorn library, None if it cannot be named."""
    path = getattr(binding.uclib, "_name", None)
    try:
        stat = os.stat(path)
    except (TypeError, OSError):
        return None
    return f"{os.path.realpath(path)} {stat.st_size} {stat.st_mtime_ns}"


def load(key: str) -> dict[str, int] | None:
    """The cached fields for ``key``, or None (no file, no entry, or not a layout)."""
    try:
        entry = json.loads(cache_path().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or set(entry) != set(FIELDS):
        return None
    if not all(type(entry[name]) is int for name in FIELDS):
        return None
    return entry


def store(key: str, fields: dict[str, int]) -> None:
    """Record ``fields`` for ``key`` (other builds' entries are kept); silently nothing if the
    cache cannot be written."""
    path = cache_path()
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = fields
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".layout-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(entries, out, indent=1, sort_keys=True)
        os.replace(temp, path)
    except OSError:
        Path(temp).unlink(missing_ok=True)

"""The project's modules loaded in this process, for `trapvisor tcb` (hypervisors/micro/tcb.py):
each process of an architecture (the hypervisor, the parent partition) reports its own
``sys.modules``."""
from __future__ import annotations

import sys

PROJECT_PACKAGES = ("emu", "vmm", "hypervisors", "guests")


def loaded_modules() -> str:
    """The project's modules loaded in this process, 'name path' a line; this measuring module
    itself is left out (the probe runs it as __main__, the parent imports it to answer)."""
    modules = list(sys.modules.items())
    return "\n".join(sorted(f"{name} {module.__file__}" for name, module in modules
                            if name.split(".")[0] in PROJECT_PACKAGES and module.__file__
                            and name != __spec__.name))

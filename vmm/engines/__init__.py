"""The CPU virtualization engines by name, and how a hypervisor makes one (with VT-x execution
controls from the --exit-on list and --ept). Both hypervisors build their vCPUs through ``make_engine``."""
from __future__ import annotations

from vmm.engines.bt import BtEngine
from vmm.engines.native import NativeEngine
from vmm.engines.trap import TrapEngine
from vmm.engines.vmx_controls import VmxControls, apply_exit_on
from vmm.engines.vtx import VtxEngine

ENGINES = {"native": NativeEngine, "trap": TrapEngine, "bt": BtEngine, "vtx": VtxEngine}


def make_engine(name: str, exit_on: str = "", ept: bool = True, apicv: bool = True):
    """An engine by name; ``exit_on`` (the --exit-on list) turns on VT-x exit controls,
    ``ept=False`` (--ept off) models VT-x without EPT (shadow paging), and ``apicv=False``
    (--apicv off) turns APIC virtualization off (engines/apic_access.py)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "vtx":
        controls = VmxControls()
        if not ept:
            controls.without_ept()
        if not apicv:
            controls.without_apicv()
        return VtxEngine(apply_exit_on(controls, exit_on))
    if not ept:
        raise ValueError("--ept off models VT-x without EPT: it needs --engine vtx")
    if exit_on:
        raise ValueError("--exit-on sets VT-x execution controls: it needs --engine vtx")
    return ENGINES[name](apicv=apicv)

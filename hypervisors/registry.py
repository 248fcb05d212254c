"""The hypervisor architectures by name: what `trapvisor run --hypervisor NAME` builds.

Not in hypervisors/__init__.py: the parent partition process imports hypervisors.micro.parent and
must not load the hypervisors themselves."""
from __future__ import annotations

from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.monolithic import MonolithicHypervisor

HYPERVISORS = {"monolithic": MonolithicHypervisor, "micro": MicroHypervisor}

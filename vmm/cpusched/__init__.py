"""Consolidation: several VMs on one physical CPU under a proportional-share scheduler with
VMware ESX's controls (policy.py: shares, reservation, limit; scheduler.py: the accounts and the
stride dispatch order; dispatch.py: running the VMs on its grants; report.py: what each got)."""

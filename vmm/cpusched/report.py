"""What each VM got from the CPU scheduler, for --stats: its controls, the guest instructions it
retired and the exits it took (from its vCPU), and its CPU share received against entitled, over
its lifetime in the machine's virtual time (like esxtop's %USED beside the entitlement)."""
from __future__ import annotations

from vmm.cpusched.policy import CAPACITY_MHZ
from vmm.cpusched.scheduler import ProportionalShare


def share_rows(scheduler: ProportionalShare, vcpus: dict) -> list[dict]:
    """One row per VM (in the scheduler's order): ``vcpus`` maps its name to its vCPU."""
    rows = []
    for name, account in scheduler.accounts.items():
        received, entitled = scheduler.share(account)
        vcpu = vcpus[name]
        rows.append({
            "vm": name, "shares": account.controls.shares,
            "reservation_mhz": account.controls.reservation, "limit_mhz": account.controls.limit,
            "instructions": vcpu.instructions, "exits": vcpu.result().exits,
            "received": received, "entitled": entitled,
            "received_over_entitled": scheduler.received_over_entitled(account),
            "mhz": received * CAPACITY_MHZ, "wakeups": account.wakeups,
            "max_wake_latency_ns": account.max_wake_latency})
    return rows


def share_report(scheduler: ProportionalShare, vcpus: dict) -> str:
    now = scheduler.now
    title = (f"CPU scheduling: proportional share on one {CAPACITY_MHZ:g} MHz CPU (1 ns of "
             f"virtual time per guest instruction), {scheduler.quantum / 1e6:g} ms quantum; "
             f"{now / 1e6:.3f} ms of virtual time, {100 * scheduler.idle_ns / (now or 1):.1f}% "
             f"idle, {scheduler.switches} VM switches")
    header = (f"{'VM':<16} {'shares':>7} {'resv MHz':>9} {'limit MHz':>9} {'instructions':>13} "
              f"{'exits':>8} {'received':>9} {'entitled':>9} {'rcv/ent':>8} {'MHz':>7} "
              f"{'wakeups':>8} {'max wake lat':>13}")
    lines = [title, "", header]
    lines += [row_text(row) for row in share_rows(scheduler, vcpus)]
    lines += ["", ("received and entitled: shares of the CPU over each VM's lifetime; entitled "
                   "is what shares, reservation and limit give it while it wants the CPU (not "
                   "halted)")]
    return "\n".join(lines)


def row_text(row: dict) -> str:
    limit = "-" if row["limit_mhz"] is None else f"{row['limit_mhz']:g}"
    ratio = row["received_over_entitled"]
    ratio_text = "-" if ratio is None else f"{ratio:.3f}"
    return (f"{row['vm']:<16} {row['shares']:>7} {row['reservation_mhz']:>9g} {limit:>9} "
            f"{row['instructions']:>13} {row['exits']:>8} {100 * row['received']:>8.2f}% "
            f"{100 * row['entitled']:>8.2f}% {ratio_text:>8} {row['mhz']:>7.1f} "
            f"{row['wakeups']:>8} {row['max_wake_latency_ns']:>10} ns")

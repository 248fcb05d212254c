"""`trapvisor tcb`: how much of the project's code each process of each architecture holds (the
trusted computing base), in lines and bytes by package.

Nothing is listed by hand: a fresh probe process boots a guest under each hypervisor and records
the project modules actually imported there (``sys.modules``); under micro the parent partition
reports its own. The probe imports the hypervisor module, not the command-line front end, which
imports every hypervisor to offer them as options.
"""
from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

from hypervisors.loaded_modules import loaded_modules

PROBE_GUEST = "hello"
PLACEMENTS = (("monolithic", "hypervisor"), ("micro", "hypervisor"), ("micro", "parent partition"))


def probe(architecture: str) -> None:
    """Run in a fresh process: boot the probe guest, print 'process<TAB>name path' lines."""
    from hypervisors.images import resolve
    if architecture == "monolithic":
        from hypervisors.monolithic import MonolithicHypervisor as Hypervisor
    else:
        from hypervisors.micro.hypervisor import MicroHypervisor as Hypervisor
    hypervisor = Hypervisor(engine="trap")
    try:
        hypervisor.run(resolve(PROBE_GUEST, hypervisor.vm.memory.size
                               if architecture == "monolithic" else hypervisor.ram_size))
        lines = [f"hypervisor\t{line}" for line in loaded_modules().splitlines()]
        if architecture == "micro":
            lines += [f"parent partition\t{line}" for line in hypervisor.parent_modules()]
    finally:
        hypervisor.close()
    print("\n".join(lines))


def measure(architecture: str) -> dict[str, dict[str, Path]]:
    """process -> {module name: source file}, from a probe run in a fresh interpreter."""
    output = subprocess.run([sys.executable, "-m", "hypervisors.micro.tcb", architecture],
                            capture_output=True, text=True, check=True).stdout
    processes: dict[str, dict[str, Path]] = collections.defaultdict(dict)
    for line in output.splitlines():
        process, entry = line.split("\t")
        name, path = entry.split(" ", 1)
        processes[process][name] = Path(path)
    return processes


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0] or name


def by_package(modules: dict[str, Path]) -> dict[str, tuple[int, int, int]]:
    """package -> (modules, lines, bytes)."""
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for name, path in modules.items():
        data = path.read_bytes()
        entry = totals[package_of(name, path)]
        entry[0] += 1
        entry[1] += data.count(b"\n")
        entry[2] += len(data)
    return {package: tuple(values) for package, values in sorted(totals.items())}


def report(measured: dict[str, dict[str, dict[str, Path]]]) -> str:
    lines = [f"{'architecture':<12} {'process':<17} {'package':<20} {'modules':>7} {'lines':>7} "
             f"{'bytes':>8}"]
    for architecture, process in PLACEMENTS:
        packages = by_package(measured[architecture][process])
        for package, (count, n_lines, n_bytes) in packages.items():
            lines.append(f"{architecture:<12} {process:<17} {package:<20} {count:>7} "
                         f"{n_lines:>7} {n_bytes:>8}")
        count, n_lines, n_bytes = (sum(v[i] for v in packages.values()) for i in range(3))
        lines.append(f"{architecture:<12} {process:<17} {'TOTAL':<20} {count:>7} {n_lines:>7} "
                     f"{n_bytes:>8}")
    return "\n".join(lines)


def main() -> int:
    try:
        measured = {architecture: measure(architecture) for architecture in ("monolithic", "micro")}
    except subprocess.CalledProcessError as exc:
        print(f"trapvisor: a tcb probe failed:\n{exc.stderr}", file=sys.stderr)
        return 4
    print(report(measured))
    return 0


if __name__ == "__main__":
    probe(sys.argv[1])

"""The `trapvisor` command: run a guest under a hypervisor and engine, list the shipped guests.

Exit status: the guest's own status when it ends through the debug-exit port (QEMU's
(v << 1) | 1 with --qemu-exit-codes); 2 for bad input (unknown guest, assembly error, bad flag);
3 when the guest ends any other way (triple fault, fault, halt forever, timeout, --max-exits,
killed from gdb, a device model that failed or a parent partition that died under micro);
4 when the hypervisor itself failed. With several guests, the status of the first one that did
not end with 0, in command-line order.

Several guests share the one CPU under the proportional-share scheduler (vmm/cpusched) with
VMware ESX's controls, given per guest in command-line order: --shares (relative weights),
--reservation and --limit (MHz of the 1000 MHz CPU, whose virtual time is 1 ns per guest
instruction).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import guests
from hypervisors.elf_image import elf_executable
from hypervisors.images import AsmError, GuestImage, resolve
from hypervisors.micro.hypervisor import MicroHypervisor, prefixed_sink
from hypervisors.micro.servicing import run_serviced
from hypervisors.monolithic import MonolithicHypervisor, run_side_by_side
from hypervisors.registry import HYPERVISORS
from vmm.cpusched.policy import CAPACITY_MHZ, DEFAULT_SHARES, Controls
from vmm.cpusched.report import share_report
from vmm.cpusched.scheduler import ProportionalShare
from hypervisors.migration import incoming, migrate_run
from hypervisors.snapshot_run import machine_of, restored, save_run
from vmm.devices.crtc import COLUMNS, TEXT_BUFFER, TEXT_BYTES, render_text
from vmm.devices.faults import inject_fault
from vmm.engines import ENGINES
from vmm.engines.vmx_controls import EXIT_ON_NAMES
from vmm.observers import ExitStats, JsonTrace
from vmm.run_state import RunState
from vmm.vm import DEFAULT_RAM

EXIT_BAD_INPUT, EXIT_GUEST_FAILED, EXIT_VMM_ERROR = 2, 3, 4


def parse_size(text: str) -> int:
    """'32M', '64MiB', '1G', '0x2000000' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if cleaned and cleaned[-1] in units:
            return int(cleaned[:-1], 0) * units[cleaned[-1]]
        return int(cleaned, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (try 32M or 0x2000000)")


def positive(kind):
    """A number > 0; a float must also be finite (nan and inf are no limit and no time: leave
    the flag out for no limit)."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value
    return convert


def endpoint(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); an empty HOST means 127.0.0.1, port 0 a free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 0xFFFF:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (try 127.0.0.1:1234)")
    return host or "127.0.0.1", int(port)


def per_guest(kind, what: str):
    """A comma-separated list, one value per guest in command-line order (an empty item or
    'none': the default for that guest; a single value applies to every guest)."""
    def convert(text: str) -> list:
        values = []
        for item in text.split(","):
            item = item.strip()
            if item in ("", "none"):
                values.append(None)
                continue
            try:
                value = kind(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not {what}: {item!r}")
            if not math.isfinite(value) or value < 0:
                raise argparse.ArgumentTypeError(f"{what} must be a finite number >= 0: {item!r}")
            values.append(value)
        return values
    return convert


SCHED_HELP = {
    "shares": f"per guest, comma-separated in command-line order: relative CPU weights "
              f"(default {DEFAULT_SHARES}, ESX's 'normal'); 1000,2000,4000 gives the CPU 1:2:4 "
              f"while all three want it",
    "reservation": f"per guest: CPU guaranteed while it wants it, in MHz of the "
                   f"{CAPACITY_MHZ:g} MHz CPU (1 MHz = a million guest instructions per virtual "
                   f"second); the reservations must fit in the CPU",
    "limit": "per guest: at most this much CPU in MHz even when the CPU is otherwise idle "
             "(an empty item or 'none': no limit, e.g. ,300)",
}

EXIT_ON_HELP = ("with --engine vtx: extra VM exits to turn on, comma-separated, from "
                + ", ".join(EXIT_ON_NAMES))
EPT_HELP = ("with --engine vtx: 'off' models first-generation VT-x without EPT: shadow page "
            "tables, with CR3-load, INVLPG and #PF exits forced on (default: on)")
APICV_HELP = ("APIC virtualization (default: on). vtx: the 'virtualize APIC accesses' and "
              "'APIC-register virtualization' controls (reads of most APIC registers exit-free, "
              "the rest APIC_ACCESS/APIC_WRITE exits); trap/bt: reads of the same registers "
              "answered inside the intercept; 'off': every APIC access an EPT_VIOLATION")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapvisor", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="boot a guest and print its serial output")
    run.add_argument("guest", nargs="*", help="a shipped guest's name, an .asm file, a flat "
                     "binary or a Multiboot ELF kernel; several share the CPU under the "
                     "proportional-share scheduler; none: boot the first --drive like a PC BIOS")
    run.add_argument("--shares", metavar="N,...", type=per_guest(int, "a share count"),
                     help=SCHED_HELP["shares"])
    run.add_argument("--reservation", metavar="MHZ,...", type=per_guest(float, "a rate in MHz"),
                     help=SCHED_HELP["reservation"])
    run.add_argument("--limit", metavar="MHZ,...", type=per_guest(float, "a rate in MHz"),
                     help=SCHED_HELP["limit"])
    run.add_argument("--hypervisor", choices=sorted(HYPERVISORS),
                     help="default monolithic; with --restore or --incoming, the snapshot's")
    run.add_argument("--engine", choices=sorted(ENGINES),
                     help="the CPU virtualization engine (default trap; with --restore, the "
                     "snapshot's)")
    run.add_argument("--exit-on", metavar="LIST", default="", help=EXIT_ON_HELP)
    run.add_argument("--ept", choices=("on", "off"), default="on", help=EPT_HELP)
    run.add_argument("--apicv", choices=("on", "off"), default="on", help=APICV_HELP)
    run.add_argument("--stats", action="store_true", help="print per-exit-reason statistics (per "
                     "VM beside the total with several guests, and the CPU each VM received "
                     "against its entitlement)")
    run.add_argument("--trace", metavar="FILE", help="write one JSON line per exit to FILE")
    run.add_argument("--timeout", metavar="S", type=positive(float),
                     help="wall-clock limit in seconds, a finite number > 0 (default: none)")
    run.add_argument("--max-exits", metavar="N", type=positive(int), help="stop after N exits")
    run.add_argument("--ram", metavar="SIZE", type=parse_size, default=32 << 20,
                     help="guest RAM (default 32M)")
    run.add_argument("--input", metavar="TEXT", default="",
                     help="bytes the UART receives (escapes such as \\n allowed)")
    run.add_argument("--stdin", action="store_true",
                     help="feed the terminal's stdin to the UART's receiver")
    run.add_argument("--wall-clock", action="store_true",
                     help="drive the PIT from wall time instead of executed instructions")
    run.add_argument("--qemu-exit-codes", action="store_true",
                     help="exit with (status << 1) | 1 like QEMU's isa-debug-exit")
    run.add_argument("--gdb", metavar="HOST:PORT", type=endpoint,
                     help="stop at the first instruction and wait for gdb (target remote) there")
    run.add_argument("--drive", metavar="FILE", action="append", default=[],
                     help="a raw disk image on the IDE primary channel (repeatable: master, then "
                     "slave); with no guest, the machine boots from the first")
    run.add_argument("--vga", action="store_true",
                     help="when the run ends, show the CGA/VGA 80x25 text screen (0xB8000) on "
                     "stderr if the guest wrote to it (monolithic)")
    run.add_argument("--append", metavar="ARGS", default="",
                     help="a Multiboot kernel's command line (QEMU's -append)")
    run.add_argument("--initrd", metavar="'FILE [ARGS]'", action="append", default=[],
                     help="a Multiboot module (repeatable, QEMU's -initrd)")
    run.add_argument("--disk", metavar="FILE", help="micro: the disk image the parent partition's "
                     "block VSP serves (default: a temporary 1 MiB image)")
    run.add_argument("--inject-device-fault", metavar="DEVICE",
                     help="make the named device model raise on its first access (a driver bug "
                     "on purpose): e.g. uart16550, pit8254, pic-master, debug-console")
    add_snapshot_options(run)
    add_debug_parser(commands)
    add_asm_parser(commands)
    commands.add_parser("guests", help="list the shipped guests")
    add_bench_parser(commands)
    commands.add_parser("fuzz", add_help=False, help="differential fuzzing: random guests under "
                        "every engine, compared with native (trapvisor fuzz --help)")
    commands.add_parser("tcb", help="lines and bytes of project code in each process, per "
                        "hypervisor architecture, measured from the modules each one imports")
    return parser


def add_snapshot_options(run) -> None:
    run.add_argument("--save", metavar="FILE", help="stop at --at-exit N (or --at-instruction "
                     "N) and write the VM's state to FILE; a list of points writes FILE, then "
                     "diff snapshots FILE.1, FILE.2, ... (either hypervisor)")
    run.add_argument("--at-exit", metavar="N[,N...]", help="with --save: after this exit")
    run.add_argument("--at-instruction", metavar="N[,N...]",
                     help="with --save: after this many guest instructions (native has no exits)")
    run.add_argument("--restore", metavar="FILE", help="continue the VM saved in FILE (no "
                     "GUEST: its RAM holds it; --engine may switch native <-> vtx, trap <-> bt, "
                     "--hypervisor monolithic <-> micro)")
    run.add_argument("--migrate", metavar="tcp:HOST:PORT", help="at --at-exit N (or "
                     "--at-instruction N), live-migrate the VM to a trapvisor run --incoming "
                     "there (pre-copy; either hypervisor)")
    run.add_argument("--incoming", metavar="tcp:HOST:PORT", help="wait there for a migrated VM "
                     "and continue it (no GUEST; port 0 picks a free one, printed on stderr)")
    run.add_argument("--service-parent-at-exit", metavar="N", type=positive(int),
                     help="micro: once a child has taken N exits, park every child as a "
                     "snapshot, restart the parent partition (a new process, as after an "
                     "update), restore the children and run them on; prints the figures")


def add_bench_parser(commands) -> None:
    """`bench` takes its options unparsed: benchmarks.suite parses them, so the benchmarks
    package loads for `trapvisor bench` alone (main() hands over what parse_known_args left)."""
    commands.add_parser("bench", add_help=False, help="measure exit costs, engines and "
                        "hypervisors on this machine and print tables (trapvisor bench --help)")


def run_bench(argv: list[str]) -> int:
    from benchmarks import plot, suite
    try:
        return suite.main(argv)
    except plot.PlotUnavailable as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run_fuzz(argv: list[str]) -> int:
    from fuzz import cli as fuzz_cli  # like `bench`: the fuzzer loads only for `trapvisor fuzz`
    return fuzz_cli.main(argv)


def add_debug_parser(commands) -> None:
    debug = commands.add_parser("debug", help="step through a guest's VM exits in a debugger")
    debug.add_argument("guest", help="a shipped guest's name, an .asm file, or a flat binary")
    debug.add_argument("--hypervisor", choices=["monolithic"], default="monolithic")
    debug.add_argument("--engine", choices=sorted(ENGINES), default="trap")
    debug.add_argument("--exit-on", metavar="LIST", default="", help=EXIT_ON_HELP)
    debug.add_argument("--ept", choices=("on", "off"), default="on", help=EPT_HELP)
    debug.add_argument("--apicv", choices=("on", "off"), default="on", help=APICV_HELP)
    debug.add_argument("--ram", metavar="SIZE", type=parse_size, default=32 << 20,
                       help="guest RAM (default 32M)")
    debug.add_argument("--input", metavar="TEXT", default="",
                       help="bytes the UART receives (escapes such as \\n allowed)")
    debug.add_argument("--ex", metavar="CMD", dest="script", action="append", default=[],
                       help="run a debugger command first (repeatable; in order with -x)")
    debug.add_argument("-x", metavar="FILE", dest="script", action="append", type=read_script,
                       help="run the debugger commands in FILE, one per line")
    debug.add_argument("--batch", action="store_true",
                       help="exit after the commands (status 1 if one failed) instead of prompting")


def add_asm_parser(commands) -> None:
    asm = commands.add_parser("asm", help="assemble a guest into an ELF executable with its "
                              "labels as symbols, for gdb's `file` (gdb then knows `break LABEL`)")
    asm.add_argument("guest", help="an .asm file, a shipped guest's name, or a flat binary")
    asm.add_argument("-o", dest="output", metavar="FILE.elf", required=True,
                     help="the ELF file to write")


def assemble_guest(args) -> int:
    """`trapvisor asm GUEST -o FILE.elf`: the guest as ``run`` loads it, written as ELF32."""
    try:
        image = resolve(args.guest, DEFAULT_RAM)
    except (ValueError, AsmError) as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not isinstance(image, GuestImage):
        print(f"trapvisor: {args.guest} is already an ELF kernel; `asm` writes assembled or flat "
              "guests as ELF", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        Path(args.output).write_bytes(elf_executable(image))
    except OSError as exc:
        print(f"trapvisor: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def read_script(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}")


def list_guests() -> int:
    for name in guests.names():
        print(f"{name:<12} {guests.describe(name)}")
    return 0


def write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    if b"\n" in data:
        sys.stdout.buffer.flush()


def load_image(args, spec: str | None):
    """The guest image, or None after saying on stderr why it cannot be loaded."""
    try:
        return resolve(spec, args.ram, getattr(args, "append", ""), getattr(args, "initrd", ()),
                       getattr(args, "drive", ()))
    except (ValueError, AsmError) as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return None


def make_scheduler(args, images) -> ProportionalShare | None:
    """The CPU scheduler for several guests, or for one given --shares/--reservation/--limit;
    None for one guest alone. ValueError says which control is wrong."""
    lists = {"shares": args.shares, "reservation": args.reservation, "limit": args.limit}
    if len(images) == 1 and not any(lists.values()):
        return None
    if args.gdb or args.stdin or args.wall_clock:
        raise ValueError("--gdb, --stdin and --wall-clock run one guest alone on the CPU "
                         "(not with several guests, --shares, --reservation or --limit)")
    for flag, values in lists.items():
        if values and len(values) not in (1, len(images)):
            raise ValueError(f"--{flag} has {len(values)} values for {len(images)} guests "
                             f"(give one per guest, or one for all)")
    pick = lambda values, n: None if not values else values[0 if len(values) == 1 else n]
    controls = {}
    for n, image in enumerate(images):
        shares, reservation = pick(args.shares, n), pick(args.reservation, n)
        controls[f"{n + 1}:{image.name}"] = Controls(
            DEFAULT_SHARES if shares is None else shares, reservation or 0.0, pick(args.limit, n))
    return ProportionalShare(controls)


def make_observers(args):
    """(--stats table or None, --trace file or None, the observers a run gets), or None after
    saying why the trace file cannot be written."""
    stats = ExitStats() if args.stats else None
    try:
        trace = open(args.trace, "w") if args.trace else None
    except OSError as exc:
        print(f"trapvisor: cannot write the trace to {args.trace}: {exc.strerror}", file=sys.stderr)
        return None
    return stats, trace, [o for o in (stats, trace and JsonTrace(trace)) if o]


def run_guest(args) -> int:
    if args.restore or args.incoming:
        return restore_guest(args)
    args.engine = args.engine or "trap"
    args.hypervisor = args.hypervisor or "monolithic"
    if args.service_parent_at_exit and (args.hypervisor != "micro" or args.save or args.migrate):
        print("trapvisor: --service-parent-at-exit needs --hypervisor micro (and no --save or "
              "--migrate)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.hypervisor == "monolithic" and args.disk:
        print("trapvisor: --disk needs --hypervisor micro", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.drive and len(args.guest) > 1:
        print("trapvisor: --drive attaches disks to one VM; name at most one guest",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    images = [load_image(args, spec) for spec in args.guest or [None]]
    if None in images:
        return EXIT_BAD_INPUT
    image = images[0]
    try:
        scheduler = make_scheduler(args, images)
    except ValueError as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    made = make_observers(args)
    if made is None:
        return EXIT_BAD_INPUT
    stats, trace, observers = made
    try:
        build = hypervisor_factory(args, observers)
        shares = ""
        if args.save or args.migrate:
            if scheduler is not None:
                raise ValueError("--save and --migrate act on one guest alone on the CPU")
            result = (save_run if args.save else migrate_run)(args, build, image)
            if result is None:
                return 0
            missed = (f"snapshot point: {args.save} was not written" if args.save
                      else "migration point: it did not move")
            print(f"trapvisor: the guest ended after {result.exits} exits and "
                  f"{result.instructions} instructions, before the {missed}", file=sys.stderr)
            if result.ok:
                return EXIT_GUEST_FAILED
        elif args.hypervisor == "micro":
            results, shares = run_micro(args, images, observers, scheduler)
        elif scheduler is not None:
            results, shares = run_monolithic(args, images, observers, scheduler)
        elif args.gdb:
            from vmm.debug.gdb import stub as gdbstub  # the stub's modules load only for --gdb
            result = gdbstub.serve(build, image, *args.gdb)
        else:
            hypervisor = build([])
            result = hypervisor.run(image)
            if args.vga:
                show_text_screen(hypervisor.vm.memory.read(TEXT_BUFFER, TEXT_BYTES))
    except (ValueError, ConnectionError, OSError) as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        sys.stdout.flush()
        if trace:
            trace.close()
    if stats:
        print(stats.report(), file=sys.stderr)
        if shares:
            print(f"\n{shares}", file=sys.stderr)
    if args.hypervisor == "micro" or scheduler is not None:
        return several_status(args, results)
    if result is None:
        print("trapvisor: gdb killed the guest", file=sys.stderr)
        return EXIT_GUEST_FAILED
    return exit_status(result, args.qemu_exit_codes)


RESTORE_FIXED = {"--drive": "drive", "--input": "input", "--stdin": "stdin",
                 "--wall-clock": "wall_clock", "--gdb": "gdb", "--vga": "vga", "--append": "append",
                 "--initrd": "initrd", "--disk": "disk",
                 "--inject-device-fault": "inject_device_fault"}


def restore_guest(args) -> int:
    """`trapvisor run --restore FILE`: the saved VM continues to its end."""
    flag = "--restore" if args.restore else "--incoming"
    if args.guest or args.save or args.migrate or (args.restore and args.incoming):
        print(f"trapvisor: {flag} takes no GUEST, no --save, --migrate, nor --restore with "
              "--incoming: it continues a saved VM", file=sys.stderr)
        return EXIT_BAD_INPUT
    fixed = [flag for flag, given in RESTORE_FIXED.items() if getattr(args, given)]
    if fixed:
        print(f"trapvisor: {', '.join(fixed)} cannot be given with {flag}: the snapshot "
              "holds the run's RAM, disks, input and clock", file=sys.stderr)
        return EXIT_BAD_INPUT
    made = make_observers(args)
    if made is None:
        return EXIT_BAD_INPUT
    stats, trace, observers = made

    def make(hypervisor: str, **options):
        built = HYPERVISORS[hypervisor](**options, sink=write_stdout, observers=observers,
                                        timeout=args.timeout, max_exits=args.max_exits)
        return machine_of(built)
    try:
        hypervisor = restored(args, make) if args.restore else incoming(args, make)
    except (ValueError, OSError) as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = hypervisor.vcpu.run()
    finally:
        sys.stdout.flush()
        hypervisor.close()
        if trace:
            trace.close()
    if stats:
        print(stats.report(), file=sys.stderr)
    return exit_status(result, args.qemu_exit_codes)


def show_text_screen(buffer: bytes, title: str = "") -> None:
    """--vga: the text-mode screen the guest left, framed (``title`` in the top rule: which VM),
    if it wrote anything there."""
    if not any(buffer[0::2]):
        return
    lines = render_text(buffer, trim=True)
    while lines and not lines[-1]:
        lines.pop()
    rule = "+" + "-" * COLUMNS + "+"
    top = f"+-{title}{'-' * (COLUMNS - 1 - len(title))}+" if title else rule
    print("\n".join([top, *(f"|{line:<{COLUMNS}}|" for line in lines), rule]), file=sys.stderr)


def show_text_screens(args, machines) -> None:
    """--vga with any hypervisor: each VM's screen, from its RAM (the CGA text buffer is guest
    memory, which the hypervisor holds under both architectures); titled when several ran."""
    if not args.vga:
        return
    for n, (vm, image) in enumerate(machines, 1):
        title = f" VM {n} ({image.name}) " if len(machines) > 1 else ""
        show_text_screen(vm.memory.read(TEXT_BUFFER, TEXT_BYTES), title)


def guest_sink(images, n: int, image):
    """With several guests, each output line is prefixed with '[N:name] '."""
    return prefixed_sink(f"[{n}:{image.name}] ", write_stdout) if len(images) > 1 else write_stdout


def run_monolithic(args, images, observers, scheduler) -> tuple[tuple[list, None], str]:
    """Every guest in its own VM in this process, sharing the CPU on the scheduler's grants.
    Returns the results (and no parent report) and, with --stats, the CPU share report."""
    machines = []
    try:
        for n, image in enumerate(images, 1):
            hypervisor = MonolithicHypervisor(
                **hypervisor_options(args), sink=guest_sink(images, n, image),
                observers=observers, timeout=args.timeout, max_exits=args.max_exits)
            machines.append((hypervisor, image))
            if args.inject_device_fault:
                inject_fault(hypervisor.vm.pio, args.inject_device_fault)
        results = run_side_by_side(machines, scheduler)
        show_text_screens(args, [(h.vm, image) for h, image in machines])
        vcpus = dict(zip(scheduler.accounts, (h.vcpu for h, _ in machines)))
        return (results, None), share_report(scheduler, vcpus) if args.stats else ""
    finally:
        for hypervisor, _ in machines:
            hypervisor.close()


def run_micro(args, images, observers, scheduler) -> tuple[tuple[list, str | None], str]:
    """Every guest in its own child partition, sharing the CPU; with several, each output line
    is prefixed with '[N:name] '. Returns the results and the parent partition's failure report,
    and with --stats and a scheduler the CPU share report."""
    if args.gdb or args.stdin:
        raise ValueError("--gdb and --stdin are not supported under --hypervisor micro")
    hypervisor = MicroHypervisor(**hypervisor_options(args), sink=write_stdout,
                                 observers=observers, timeout=args.timeout,
                                 max_exits=args.max_exits, wall_clock=args.wall_clock,
                                 disk=args.disk, inject_fault=args.inject_device_fault)
    try:
        guests_ = [(hypervisor.create_partition(image.name, guest_sink(images, n, image)), image)
                   for n, image in enumerate(images, 1)]
        partitions = [partition for partition, _ in guests_]
        if args.service_parent_at_exit:
            results, _figures, partitions = run_serviced(
                hypervisor, guests_, args.service_parent_at_exit, scheduler)
        else:
            results = hypervisor.run_all(guests_, scheduler)
        show_text_screens(args, [(partition.vm, image)
                                 for partition, (_, image) in zip(partitions, guests_)])
        shares = ""
        if scheduler is not None and args.stats:
            vcpus = dict(zip(scheduler.accounts, (p.vcpu for p in partitions)))
            shares = share_report(scheduler, vcpus)
        return (results, hypervisor.parent_report()), shares
    finally:
        hypervisor.close()


def several_status(args, outcome) -> int:
    """The first failing VM's exit status (in command-line order), else 0."""
    results, parent_report = outcome
    statuses = []
    for n, result in enumerate(results, 1):
        if not result.ok and len(results) > 1:
            print(f"trapvisor: VM {n} ({args.guest[n - 1]}):", file=sys.stderr)
        statuses.append(exit_status(result, args.qemu_exit_codes))
    if parent_report:
        print(parent_report, file=sys.stderr)
    return next((status for status in statuses if status), 0)


def hypervisor_options(args) -> dict:
    """The hypervisor's keyword arguments that `run` and `debug` share."""
    options = dict(engine=args.engine, ram_size=args.ram, drives=getattr(args, "drive", ()),
                   input_data=args.input.encode().decode("unicode_escape").encode("latin-1"))
    if args.exit_on:
        options["exit_on"] = args.exit_on
    if args.ept == "off":
        options["ept"] = False
    if args.apicv == "off":
        options["apicv"] = False
    return options


def hypervisor_factory(args, observers):
    """build(extra_observers) -> a fresh, not yet booted hypervisor with the run options."""
    def build(extra: list):
        hypervisor = HYPERVISORS[args.hypervisor](
            **hypervisor_options(args), sink=write_stdout,
            input_stream=sys.stdin.buffer if args.stdin else None,
            observers=[*observers, *extra], timeout=args.timeout, max_exits=args.max_exits,
            wall_clock=args.wall_clock)
        if args.inject_device_fault:
            inject_fault(hypervisor.vm.pio, args.inject_device_fault)
        return hypervisor
    return build


def debug_guest(args) -> int:
    from vmm.debug import repl as debugger  # the debugger's modules load only for `trapvisor debug`
    image = load_image(args, args.guest)
    if image is None:
        return EXIT_BAD_INPUT

    def make(sink, observers):
        return HYPERVISORS[args.hypervisor](**hypervisor_options(args), sink=sink,
                                            observers=observers)
    script = [line for item in args.script for line in ([item] if isinstance(item, str) else item)]
    return debugger.run(make, image, script, args.batch)


def exit_status(result, qemu_codes: bool) -> int:
    if result.state in (RunState.EXITED, RunState.INPUT_DONE):
        if result.fidelity:
            print(f"trapvisor: {result.fidelity}", file=sys.stderr)
        if result.state is RunState.INPUT_DONE:
            return 0
        return ((result.status << 1) | 1) & 0xFF if qemu_codes else result.status & 0xFF
    print(result.report(), file=sys.stderr)
    return EXIT_VMM_ERROR if result.state is RunState.VMM_ERROR else EXIT_GUEST_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return run_bench(rest)
    if args.command == "fuzz":
        return run_fuzz(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "guests":
        return list_guests()
    if args.command == "tcb":
        from hypervisors.micro import tcb  # measures in fresh processes; loads only here
        return tcb.main()
    if args.command == "debug":
        return debug_guest(args)
    if args.command == "asm":
        return assemble_guest(args)
    return run_guest(args)


if __name__ == "__main__":
    sys.exit(main())

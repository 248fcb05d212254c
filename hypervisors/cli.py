"""The `trapvisor` command: run a guest under a hypervisor and engine, list the shipped guests.

Exit status: the guest's own status when it ends through the debug-exit port (QEMU's
(v << 1) | 1 with --qemu-exit-codes); 2 for bad input (unknown guest, assembly error, bad flag);
3 when the guest ends any other way (triple fault, fault, halt forever, timeout, --max-exits,
killed from gdb);
4 when the hypervisor itself failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import guests
from hypervisors.images import AsmError, ImageError, resolve
from hypervisors.monolithic import ENGINES, MonolithicHypervisor
from vmm.observers import ExitStats, JsonTrace
from vmm.vcpu import RunState

EXIT_BAD_INPUT, EXIT_GUEST_FAILED, EXIT_VMM_ERROR = 2, 3, 4
HYPERVISORS = {"monolithic": MonolithicHypervisor}


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
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapvisor", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="boot a guest and print its serial output")
    run.add_argument("guest", help="a shipped guest's name, an .asm file, or a flat binary")
    run.add_argument("--hypervisor", choices=sorted(HYPERVISORS), default="monolithic")
    run.add_argument("--engine", choices=sorted(ENGINES), default="trap")
    run.add_argument("--stats", action="store_true", help="print per-exit-reason statistics")
    run.add_argument("--trace", metavar="FILE", help="write one JSON line per exit to FILE")
    run.add_argument("--timeout", metavar="S", type=positive(float), help="wall-clock limit")
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
    add_debug_parser(commands)
    commands.add_parser("guests", help="list the shipped guests")
    return parser


def add_debug_parser(commands) -> None:
    debug = commands.add_parser("debug", help="step through a guest's VM exits in a debugger")
    debug.add_argument("guest", help="a shipped guest's name, an .asm file, or a flat binary")
    debug.add_argument("--hypervisor", choices=sorted(HYPERVISORS), default="monolithic")
    debug.add_argument("--engine", choices=sorted(ENGINES), default="trap")
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


def load_image(args):
    """The guest image, or None after saying on stderr why it cannot be loaded."""
    try:
        return resolve(args.guest, args.ram)
    except (ImageError, AsmError) as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return None


def run_guest(args) -> int:
    image = load_image(args)
    if image is None:
        return EXIT_BAD_INPUT
    stats = ExitStats() if args.stats else None
    trace = open(args.trace, "w") if args.trace else None
    observers = [o for o in (stats, trace and JsonTrace(trace)) if o]
    try:
        build = hypervisor_factory(args, observers)
        if args.gdb:
            from vmm import gdbstub  # the stub's modules load only for --gdb
            result = gdbstub.serve(build, image, *args.gdb)
        else:
            result = build([]).run(image)
    except ValueError as exc:
        print(f"trapvisor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        sys.stdout.flush()
        if trace:
            trace.close()
    if stats:
        print(stats.report(), file=sys.stderr)
    if result is None:
        print("trapvisor: gdb killed the guest", file=sys.stderr)
        return EXIT_GUEST_FAILED
    return exit_status(result, args.qemu_exit_codes)


def hypervisor_options(args) -> dict:
    """The hypervisor's keyword arguments that `run` and `debug` share."""
    return dict(engine=args.engine, ram_size=args.ram,
                input_data=args.input.encode().decode("unicode_escape").encode("latin-1"))


def hypervisor_factory(args, observers):
    """build(extra_observers) -> a fresh, not yet booted hypervisor with the run options."""
    def build(extra: list):
        return HYPERVISORS[args.hypervisor](
            **hypervisor_options(args), sink=write_stdout,
            input_stream=sys.stdin.buffer if args.stdin else None,
            observers=[*observers, *extra], timeout=args.timeout, max_exits=args.max_exits,
            wall_clock=args.wall_clock)
    return build


def debug_guest(args) -> int:
    from vmm import debugger  # the debugger's modules load only for `trapvisor debug`
    image = load_image(args)
    if image is None:
        return EXIT_BAD_INPUT

    def make(sink, observers):
        return HYPERVISORS[args.hypervisor](**hypervisor_options(args), sink=sink,
                                            observers=observers)
    script = [line for item in args.script for line in ([item] if isinstance(item, str) else item)]
    return debugger.run(make, image, script, args.batch)


def exit_status(result, qemu_codes: bool) -> int:
    if result.state is RunState.EXITED:
        return ((result.status << 1) | 1) & 0xFF if qemu_codes else result.status & 0xFF
    print(result.report(), file=sys.stderr)
    return EXIT_VMM_ERROR if result.state is RunState.VMM_ERROR else EXIT_GUEST_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "guests":
        return list_guests()
    if args.command == "debug":
        return debug_guest(args)
    return run_guest(args)


if __name__ == "__main__":
    sys.exit(main())

"""The fuzzer's worker process (``python -m fuzz.worker``): it runs guest images under the
monolithic hypervisor, one request per line on stdin (JSON: engine, image, bounds, and for an
image that logs its records to RAM where the log lies), one JSON result per line on stdout. A
logged run's output is its log, read from guest RAM after the run however it ended, followed
by anything the console printed. A run that raises out of the hypervisor is reported as a crash with
its traceback; if this process dies or stops answering, the pool (fuzz/pool.py) sees it.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

from hypervisors.images import BOOT_ADDRESS, GuestImage
from hypervisors.monolithic import MonolithicHypervisor
from fuzz.outcome import Outcome, Run
from vmm.run_state import RunState

OUTCOMES = {RunState.EXITED: Outcome.EXITED, RunState.GUEST_FAULT: Outcome.GUEST_FAULT,
            RunState.TRIPLE_FAULT: Outcome.TRIPLE_FAULT, RunState.HALTED: Outcome.HALTED,
            RunState.TIMEOUT: Outcome.TIMEOUT, RunState.MAX_EXITS: Outcome.MAX_EXITS,
            RunState.VMM_ERROR: Outcome.VMM_ERROR, RunState.DEVICE_ERROR: Outcome.DEVICE_ERROR,
            RunState.RUNNING: Outcome.INSTRUCTION_LIMIT}


MAX_LOG = 1 << 20        # bytes of a record log read at most, whatever its length says


def run_case(engine: str, image: bytes, timeout: float, max_exits: int,
             max_instructions: int, log: tuple[int, int] | None = None) -> Run:
    """``log``: (address of the record log, address of its 32-bit length)."""
    output: list[bytes] = []
    started = time.perf_counter()
    try:
        hypervisor = MonolithicHypervisor(engine=engine, sink=output.append, timeout=timeout,
                                          max_exits=max_exits)
        try:
            hypervisor.boot(GuestImage("fuzz-case", image, BOOT_ADDRESS, []))
            vcpu = hypervisor.vcpu
            vcpu.control.step(max_instructions)
            vcpu.resume()
            result = vcpu.result()
            if log is not None:
                output.insert(0, read_log(hypervisor.vm.memory, *log))
        finally:
            hypervisor.close()
    except Exception:
        return Run(engine, Outcome.CRASH, output=b"".join(output),
                   message=traceback.format_exc(), seconds=time.perf_counter() - started)
    message = result.message if result.state is not RunState.RUNNING else (
        f"still running after {max_instructions} instructions")
    return Run(engine, OUTCOMES[result.state], result.status, b"".join(output), message,
               result.exits, result.instructions, time.perf_counter() - started,
               result.fidelity)


def read_log(memory, address: int, length_at: int) -> bytes:
    length = int.from_bytes(memory.read(length_at, 4), "little")
    return memory.read(address, max(0, min(length, MAX_LOG, memory.size - address)))


def main() -> int:
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                # whatever else writes to stdout cannot garble the results
    for line in sys.stdin:
        request = json.loads(line)
        run = run_case(request["engine"], bytes.fromhex(request["image"]), request["timeout"],
                       request["max_exits"], request["max_instructions"], request.get("log"))
        results.write(json.dumps(run.to_json()) + "\n")
        results.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

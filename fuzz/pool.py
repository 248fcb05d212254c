"""Worker processes that run fuzz cases (fuzz/worker.py), so that whatever a case does to the
VMM — a Python exception, a crash of the process, a run that ignores --timeout — is caught and
classified instead of ending the campaign. A worker that died or hung is replaced."""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

from fuzz.outcome import Outcome, Run

HANG_GRACE = 10.0        # seconds past --timeout before a silent worker counts as hung
STDERR_TAIL = 2000


@dataclass(frozen=True)
class Bounds:
    """What bounds one run: wall time, exits, guest instructions."""
    timeout: float = 5.0
    max_exits: int = 200_000
    max_instructions: int = 2_000_000


class Worker:
    """One ``python -m fuzz.worker`` process."""

    def __init__(self):
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-m", "fuzz.worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True, bufsize=1)

    def run(self, engine: str, image: bytes, bounds: Bounds, log=None) -> Run:
        request = dict(engine=engine, image=image.hex(), timeout=bounds.timeout,
                       max_exits=bounds.max_exits, max_instructions=bounds.max_instructions,
                       log=log)
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except OSError:
            return self._died(engine)
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(bounds.timeout + HANG_GRACE):
                self.process.kill()
                self.process.wait()
                return Run(engine, Outcome.HANG, message=f"no answer {HANG_GRACE:g} s after "
                           f"--timeout {bounds.timeout:g} s expired: the VMM did not stop")
        line = self.process.stdout.readline()
        if not line:
            return self._died(engine)
        return Run.from_json(json.loads(line))

    def _died(self, engine: str) -> Run:
        code = self.process.wait()
        self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, self.stderr.tell() - STDERR_TAIL))
        tail = self.stderr.read().decode(errors="replace")
        return Run(engine, Outcome.CRASH, message=f"the worker process died (status {code}): "
                   f"{tail}")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.alive:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.stderr.close()


class Pool:
    """Workers on demand, one per calling thread; a dead or hung worker is replaced."""

    def __init__(self):
        self.local = threading.local()
        self.workers: list[Worker] = []
        self.lock = threading.Lock()

    def run(self, engine: str, image: bytes, bounds: Bounds, log=None) -> Run:
        """``log``: where a logged image keeps its records (fuzz/program.py record_log)."""
        worker = getattr(self.local, "worker", None)
        if worker is None or not worker.alive:
            worker = self.local.worker = Worker()
            with self.lock:
                self.workers.append(worker)
        return worker.run(engine, image, bounds, log)

    def close(self) -> None:
        with self.lock:
            for worker in self.workers:
                worker.close()
            self.workers.clear()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

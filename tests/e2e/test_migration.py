"""Live migration between two trapvisor processes on this machine (--incoming / --migrate): the
guest's output across the move equals an unmigrated run's."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import CLI, ROOT, trapvisor


def incoming(*options: str) -> tuple[subprocess.Popen, str]:
    target = subprocess.Popen([*CLI, "run", "--incoming", "tcp:127.0.0.1:0", *options],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = target.stderr.readline().decode()
    found = re.search(r"tcp:127\.0\.0\.1:\d+", line)
    assert found, line
    return target, found.group(0)


@pytest.mark.parametrize("guest, engine, trigger", [("interrupts", "bt", ("--at-exit", "300")),
                                                    ("interrupts", "native",
                                                     ("--at-instruction", "3000000"))])
def test_migrated_guest_continues_on_the_target(guest, engine, trigger):
    plain = trapvisor("run", guest, "--engine", engine)
    target, where = incoming()
    source = trapvisor("run", guest, "--engine", engine, "--migrate", where, *trigger)
    out, err = target.communicate(timeout=120)
    assert source.returncode == 0, source.stderr
    assert re.search(r"pre-copy rounds, \d+ pages, \d+ bytes, total [\d.]+ s, downtime "
                     r"[\d.]+ ms", source.stderr)
    assert target.returncode == plain.returncode == 0, err.decode()
    assert source.stdout + out.decode() == plain.stdout


def test_nobody_listening_is_one_line_and_status_2():
    target, where = incoming()
    target.kill()
    target.communicate()
    refused = trapvisor("run", "hello", "--migrate", where, "--at-exit", "5")
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr

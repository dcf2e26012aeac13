"""The watcher's two ways of finding the driver's descendants agree (rhizomorph/reaper.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from rhizomorph import reaper

#: A child that starts a grandchild and waits.
TREE = (
    "import subprocess, sys, time;"
    " subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
)


def test_the_children_lists_and_the_full_scan_find_the_same_descendants() -> None:
    child = subprocess.Popen([sys.executable, "-c", TREE])
    try:
        deadline = time.monotonic() + 10
        while len(reaper.scanned_descendants(child.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        scanned = set(reaper.scanned_descendants(os.getpid()))
        assert child.pid in scanned and len(scanned & set(reaper.scanned_descendants(child.pid))) == 1
        if reaper.HAS_CHILDREN_FILES:
            assert set(reaper.descendants(os.getpid(), every_thread=True)) >= {child.pid} | set(
                reaper.scanned_descendants(child.pid)
            )
    finally:
        for pid in reaper.scanned_descendants(child.pid):
            os.kill(pid, 9)
        child.kill()
        child.wait()

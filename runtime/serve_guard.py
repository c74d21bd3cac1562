"""The launcher's guard: kills the Triton server's process group and removes what it leaves behind once the launcher
is gone, however it went (kill -9 included).

``runtime.serve`` starts it (by path, with the standard library only: it must start in milliseconds and import
nothing of the toolkit) in its own session with a pipe on stdin. The first line is JSON: ``pgid`` (the server's
process group: tritonserver and the Python backend's stubs), ``before`` (the ``/dev/shm`` Python-backend regions
that existed before the server started) and ``workspace`` (the launcher's temporary folder). Then the guard waits
for end-of-file, which the kernel delivers when the launcher exits or is killed, since only the launcher holds the
write end. While it waits it records every region the group maps (``/proc/<pid>/maps``), so that it knows which
ones are this server's. At end-of-file it SIGKILLs the group (the stub of a server killed mid-batch ignores
SIGTERM), waits for it to be gone (bounded), unlinks the regions the group mapped, plus regions created since the
start that no process maps any more, and removes the workspace.

The functions are shared with the launcher (``runtime.serve``), which uses the same cleanup on a normal stop.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import time

SHM = "/dev/shm"
REGION_PREFIX = "triton_python_backend_shm_region_"
SCAN_EVERY_S = 0.2
GONE_WITHIN_S = 10.0


def regions() -> set[str]:
    """Names of the Python backend's shared-memory regions in /dev/shm now."""
    try:
        return {n for n in os.listdir(SHM) if n.startswith(REGION_PREFIX)}
    except OSError:
        return set()


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies excluded: they hold no memory and will not run again)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": the name may hold spaces
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def mapped_regions(pids) -> set[str]:
    """The Python-backend regions that these processes map (their names in /proc/<pid>/maps)."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    at = line.find(f"{SHM}/{REGION_PREFIX}")
                    if at >= 0:
                        names.add(line[at + len(SHM) + 1:].split()[0])
        except OSError:
            continue
    return names


def all_mapped_regions() -> set[str]:
    return mapped_regions(int(e) for e in os.listdir("/proc") if e.isdigit())


def kill_group(pgid: int, within: float = GONE_WITHIN_S) -> list[int]:
    """SIGKILL every process of the group and wait (at most ``within`` s) until none is left; the pids that remain."""
    deadline = time.monotonic() + within
    while True:
        left = group_pids(pgid)
        if not left or time.monotonic() >= deadline:
            return left
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:  # ESRCH: gone between the scan and the kill; EPERM cannot happen for our own children
            pass
        time.sleep(0.05)


def remove_regions(ours: set[str], before: set[str]) -> list[str]:
    """Unlink the regions this server mapped, and those created since it started that nobody maps any more (made
    and left between two scans). Regions that existed before it started, or that a live process maps, stay."""
    now = regions()
    candidates = (ours | (now - before)) & now
    in_use = all_mapped_regions()
    removed = []
    for name in sorted(candidates - in_use):
        try:
            os.unlink(os.path.join(SHM, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def cleanup(pgid: int, ours: set[str], before: set[str], workspace: str | None) -> tuple[list[int], list[str]]:
    ours = ours | mapped_regions(group_pids(pgid))  # last look before the kill unmaps them
    left = kill_group(pgid)
    removed = remove_regions(ours, before)
    if workspace:
        shutil.rmtree(workspace, ignore_errors=True)
    return left, removed


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when to stop, through the pipe
    header = sys.stdin.buffer.readline()
    if not header:
        return 0
    spec = json.loads(header)
    pgid, before, workspace = int(spec["pgid"]), set(spec.get("before", [])), spec.get("workspace")
    ours: set[str] = set()
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], SCAN_EVERY_S)
        if ready and not os.read(stdin.fileno(), 4096):
            break  # end-of-file: the launcher has gone (or has stopped the server and closed the pipe)
        ours |= mapped_regions(group_pids(pgid))
    cleanup(pgid, ours, before, workspace)
    return 0


if __name__ == "__main__":
    sys.exit(main())

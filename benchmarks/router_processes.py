"""The processes of ``rhizomorph serve`` with an embedded Ray, by role, and their CPU time."""

from __future__ import annotations

import re

import psutil

#: Process roles, by a pattern of the command line (the first that matches names it).
ROLES = (
    ("gcs_server", r"/gcs_server\b"),
    ("raylet", r"/raylet\b"),
    ("dashboard head", r"dashboard/dashboard\.py"),
    ("dashboard agent", r"dashboard/agent\.py|ray::DashboardAgent"),
    ("runtime-env agent", r"runtime_env/agent/main\.py|ray::RuntimeEnvAgent"),
    ("log monitor", r"log_monitor\.py"),
    ("autoscaler monitor", r"autoscaler/_private/monitor\.py"),
    ("reaper (rhizomorph)", r"rhizomorph/reaper\.py"),
    ("controller actor", r"ray::(\S*:)?Controller\b"),
    ("registry actor", r"ray::(\S*:)?Registry\b"),
    ("gateway worker actor", r"ray::(\S*:)?GatewayWorker\b"),
    ("chunk relay actor", r"ray::(\S*:)?ChunkRelay\b"),
    ("idle Ray worker", r"ray::IDLE|default_worker\.py"),
    ("driver (rhizomorph serve)", r"-m rhizomorph(\.cli)? serve"),
)


#: The roles that are Ray's own processes (the rest are rhizomorph's: its driver, watcher, actors).
RAY_ROLES = {"gcs_server", "raylet", "dashboard head", "dashboard agent", "runtime-env agent", "log monitor"}
RAY_ROLES |= {"autoscaler monitor", "idle Ray worker"}

#: Role -> (processes, share of one core in %).
Roles = dict[str, tuple[int, float]]


def role(process: psutil.Process) -> str:
    try:
        cmdline = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    for name, pattern in ROLES:
        if re.search(pattern, cmdline):
            return name
    return "other: " + cmdline[:60]


def cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def tree(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and its live descendants (none if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid`` and its live descendants (those that exited are missed)."""
    return sum(seconds for process in tree(pid) if (seconds := cpu_seconds(process)) is not None)

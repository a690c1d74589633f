"""CPU time and memory of a process tree, read from /proc (Linux only).

A relay is a tree of processes (Postfix: master and its children; mxgate: one
process). CPU time is utime + stime of every live process in the tree plus
cutime + cstime (children that exited and were reaped by their parent), so a
Postfix smtpd that exits mid-trial still counts: its time moves to master's
cutime. Memory is the sum over the tree of VmRSS and of Pss (shared pages
split between sharers, the fair figure for many processes), sampled by a
background thread.

It does NOT follow processes that re-parent away from the tree (daemonising).
"""

import os
import threading

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children_map():
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        rest = stat[stat.rfind(b")") + 2:].split()
        ppid = int(rest[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def tree(root_pid):
    """The pids of root_pid and all its live descendants."""
    children = _children_map()
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids):
    """utime + stime + cutime + cstime summed over pids, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2:].split()
        # Fields 14..17 of proc(5) are utime stime cutime cstime; rest starts at field 3.
        ticks += sum(int(x) for x in rest[11:15])
    return ticks / CLK_TCK


def _status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_kib(pids):
    """(sum of VmRSS, sum of Pss) over pids, KiB."""
    return (sum(_status_kib(p, "VmRSS:") for p in pids), sum(_pss_kib(p) for p in pids))


def hwm_kib(pid):
    """VmHWM (peak RSS over the process's life) of one process, KiB."""
    return _status_kib(pid, "VmHWM:")


class MemorySampler:
    """Samples the tree's RSS/PSS every `interval` s between start() and stop()."""

    def __init__(self, root_pid, interval=0.1):
        self.root_pid = root_pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        rss, pss = memory_kib(tree(self.root_pid))
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self):
        if self.root_pid is None:
            return self
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()

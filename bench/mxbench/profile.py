"""Profile evidence for the results: fsyncs per message and where mxgate's CPU goes.

During one extra trial per relay it runs
  perf record -a -e syscalls:sys_enter_fsync,fdatasync   (counted per process name)
  perf record -F 499 -g -p MXGATE_PID                    (mxgate only: top symbols)
and returns the counts and the top of `perf report`. Needs root and perf; when perf
is missing or refuses, it returns the reason instead of numbers.

It does NOT run callgrind (too slow for a throughput run; see docs/benchmarks.md)
or attribute fsyncs by pid: Postfix's processes come and go, so it groups by name.
"""

import collections
import os
import shutil
import signal
import subprocess

from . import trials

POSTFIX_COMMS = {"smtpd", "cleanup", "qmgr", "smtp", "master", "postlogd", "trivial-rewrite",
                 "bounce", "pickup", "anvil", "scache", "proxymap", "tlsmgr"}


def _start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc):
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return err.decode(errors="replace")


def fsync_and_cpu(name, port, pid, sink, sessions, msgs, size, workdir, cpu=False):
    if shutil.which("perf") is None:
        return {"system": name, "error": "perf not installed"}
    fs_data = os.path.join(workdir, f"perf-fsync-{name}.data")
    cpu_data = os.path.join(workdir, f"perf-cpu-{name}.data")
    fs = _start(["perf", "record", "-a", "-e", "syscalls:sys_enter_fsync", "-e",
                 "syscalls:sys_enter_fdatasync", "-o", fs_data])
    prof = _start(["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", cpu_data]) if cpu else None
    # perf needs a moment to attach; a tiny trial absorbs that instead of a sleep.
    trials.trial(name, port, pid, sink, 1, 5, size)
    r = trials.trial(name, port, pid, sink, sessions, msgs, size)
    _finish(fs)
    if prof is not None:
        _finish(prof)
    total = msgs + r["sampled"] + 5 + 5  # both trials' messages, latency samples approximated
    script = subprocess.run(["perf", "script", "-i", fs_data, "-F", "comm,event"],
                            capture_output=True, text=True)
    by_comm = collections.Counter()
    for line in script.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            by_comm[parts[0]] += 1
    mine = {c: n for c, n in by_comm.items()
            if (c in POSTFIX_COMMS if name == "postfix" else c.startswith("mxgate"))}
    out = {"system": name, "trial": r, "fsyncs_by_process": dict(by_comm.most_common(12)),
           "fsyncs": sum(mine.values()), "messages": total,
           "fsyncs_per_message": sum(mine.values()) / total if total else None}
    if cpu:
        rep = subprocess.run(["perf", "report", "-i", cpu_data, "--stdio", "--no-children", "-g", "none",
                              "--sort", "dso,symbol", "--percent-limit", "1.5"],
                             capture_output=True, text=True)
        out["cpu_top"] = "\n".join(l for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#"))[:4000]
    return out

"""Profile evidence for the results: fsyncs per message and where mxgate's CPU goes.

During one extra trial per relay it runs
  perf record -a -e syscalls:sys_enter_fsync,fdatasync   (counted per process name)
  perf record -F 1999 -g -p MXGATE_PID                    (mxgate only: top symbols)
and returns the counts and the top of `perf report`. Needs root and perf; when perf
is missing or refuses, it returns the reason instead of numbers.

It does NOT run callgrind (too slow for a throughput run; see docs/benchmarks.md)
or attribute Postfix's fsyncs by pid: its processes come and go, so they are
grouped by process name (another Postfix on the machine would be counted too).
"""

import collections
import os
import re
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
    fs_data = os.path.join(workdir, f"perf-fsync-{name}-{sessions}.data")
    cpu_data = os.path.join(workdir, f"perf-cpu-{name}-{sessions}.data")
    fs = _start(["perf", "record", "-a", "-e", "syscalls:sys_enter_fsync", "-e",
                 "syscalls:sys_enter_fdatasync", "-o", fs_data])
    prof = _start(["perf", "record", "-F", "1999", "-g", "-p", str(pid), "-o", cpu_data]) if cpu else None
    # perf needs a moment to attach; a tiny trial absorbs that instead of a sleep.
    trials.trial(name, port, pid, sink, 1, 5, size)
    r = trials.trial(name, port, pid, sink, sessions, msgs, size)
    _finish(fs)
    if prof is not None:
        _finish(prof)
    total = msgs + r["sampled"] + 5 + 5  # both trials' messages, latency samples approximated
    script = subprocess.run(["perf", "script", "-i", fs_data, "-F", "pid,comm,event"],
                            capture_output=True, text=True)
    by_comm = collections.Counter()
    mine = 0
    for line in script.stdout.splitlines():
        # "COMM PID EVENT:"; COMM may contain spaces, so parse from the right.
        parts = line.rsplit(None, 2)
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        comm, tgid = parts[0].strip(), int(parts[1])
        by_comm[comm] += 1
        # mxgate is one process: count by pid (other mxgate processes may run on the box).
        if (comm in POSTFIX_COMMS) if name == "postfix" else (tgid == pid):
            mine += 1
    out = {"system": name, "trial": r, "fsyncs_by_process": dict(by_comm.most_common(12)),
           "fsyncs": mine, "messages": total, "fsyncs_per_message": mine / total if total else None}
    if cpu:
        rep = subprocess.run(["perf", "report", "-i", cpu_data, "--stdio", "--no-children", "-g", "none",
                              "--sort", "dso,symbol", "--percent-limit", "1"],
                             capture_output=True, text=True)
        lines = [re.sub(r"(\s+-)+\s*$", "", line).rstrip() for line in rep.stdout.splitlines()
                 if line.strip() and not line.startswith("#")]
        out["cpu_top"] = "\n".join(lines[:30])
    return out

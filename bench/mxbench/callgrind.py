"""Instructions per message for mxgate under valgrind --tool=callgrind.

Instruction counts barely move with machine noise, so they are the figure to
compare before and after an optimisation. Two runs of a fresh mxgate under
callgrind: one that only starts and stops, one that also relays `msgs`
messages through the sink; (Ir_with - Ir_without) / msgs is the cost of one
message (accept + spool + delivery + cleanup), startup excluded. Also returns
the top functions of the loaded run (callgrind_annotate, inclusive=no).

It does NOT profile Postfix (many short-lived processes; the fsync and CPU
figures compare the two) and is not part of the default run (`--only callgrind`).
"""

import glob
import os
import re
import subprocess

from . import trials
from .systems import Mxgate


def _total_ir(out_file):
    with open(out_file) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    return None


def _run(binary, workdir, sink, dns_port, name, msgs, size):
    out_file = os.path.join(workdir, f"callgrind.{name}.out")
    wrapper = os.path.join(workdir, f"callgrind-{name}.sh")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out_file} "
                f"--trace-children=no {binary} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    mx = Mxgate(wrapper, workdir, sink.port, dns_port, name=name)
    try:
        mx.start(timeout=300)
        if msgs:
            base = sink.delivered()
            trials.smtp_source(mx.port, 1, msgs, size)
            # Under valgrind everything is ~50x slower; the delivery still completes.
            watch = trials.DeliveryWatch(sink)
            if watch.reached(base + msgs, 300) is None:
                return None, out_file
    finally:
        mx.stop()
    # valgrind writes one file per process; the pid suffix appears when %p is used only.
    files = glob.glob(out_file + "*")
    return (_total_ir(files[0]) if files else None), (files[0] if files else out_file)


def instructions_per_message(binary, workdir, sink, dns_port, msgs, size):
    idle_ir, _ = _run(binary, workdir, sink, dns_port, "cg-idle", 0, size)
    busy_ir, busy_file = _run(binary, workdir, sink, dns_port, "cg-busy", msgs, size)
    out = {"messages": msgs, "ir_startup_only": idle_ir, "ir_with_messages": busy_ir,
           "ir_per_message": ((busy_ir - idle_ir) / msgs) if idle_ir and busy_ir else None}
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", busy_file], capture_output=True, text=True)
    lines = []
    for line in ann.stdout.splitlines():
        # "  8,589,503 ( 5.32%)  path/file.rs:function [object]" -> count, share, function
        m = re.match(r"^\s*([\d,]+) \(\s*([\d.]+%)\)\s+(?:[^:\s]*:)?(.*?)(?:\s\[[^\]]*\])?$", line)
        if m:
            lines.append(f"{m.group(1):>13} {m.group(2):>7}  {m.group(3)[:140]}")
    out["top"] = "\n".join(lines[:25])
    return out

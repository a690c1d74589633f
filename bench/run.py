#!/usr/bin/env python3
"""mxgate benchmark: mxgate vs a private Postfix vs the bare smtp-source -> smtp-sink bound.

Usage (as root: Postfix's master and smtp-sink -u need it):
  bench/run.sh --quick                  # smoke run, under a minute
  bench/run.sh                          # full run, ~10-15 minutes
  bench/run.sh --mxgate PATH --only core,tls,queue --queue-sizes 1000,100000,1000000

See docs/benchmarks.md for what is measured and how. Writes results.json and
results.md into the work directory (printed at the end) and prints the
Markdown report to stdout. It does NOT build mxgate (run.sh does, if asked)
and does not touch the system Postfix or /etc.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mxbench import callgrind, profile, report, trials  # noqa: E402
from mxbench.systems import BenchError, Mxgate, Postfix, Sink, Unbound, free_port  # noqa: E402
from mxbench.trials import log  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, one repetition")
    ap.add_argument("--mxgate", default=os.environ.get("MXGATE_BIN", "target/release/mxgate"))
    ap.add_argument("--no-mxgate", action="store_true", help="measure only the bound and Postfix")
    ap.add_argument("--only", default="core,profile,tls,queue",
                    help="comma list of: core, profile, tls, queue, callgrind (profile needs core; "
                         "callgrind is slow and not in the default list)")
    ap.add_argument("--sessions", default="1,10,50")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--size", type=int, default=4096, help="message payload bytes (smtp-source -l)")
    ap.add_argument("--msgs", type=int, help="messages per trial (default depends on mode and sessions)")
    ap.add_argument("--queue-sizes", help="comma list of queued-message counts for the queue-scale run")
    ap.add_argument("--workdir", help="default: a new directory under /var/tmp")
    return ap.parse_args()


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: Postfix's master and smtp-sink -u need it")
    parts = set(args.only.split(","))
    sessions_list = [int(x) for x in args.sessions.split(",")]
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    if args.msgs:
        msgs_for = {s: args.msgs for s in sessions_list}
    elif quick:
        msgs_for = {s: 100 if s == 1 else 300 for s in sessions_list}
    else:
        msgs_for = {s: 2000 if s == 1 else 10000 for s in sessions_list}
    queue_sizes = [int(x) for x in (args.queue_sizes or ("200,1000" if quick else "1000,100000")).split(",")]
    use_mxgate = not args.no_mxgate
    if use_mxgate and not os.access(args.mxgate, os.X_OK):
        sys.exit(f"no mxgate binary at {args.mxgate} (cargo build --release -p mxgate, or --no-mxgate)")
    mxbin = os.path.abspath(args.mxgate)

    workdir = args.workdir or tempfile.mkdtemp(prefix="mxbench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    log(f"work directory {workdir}")
    started = time.time()
    machine = report.machine()
    machine["fsync_ms"] = report.fsync_cost_ms(workdir)
    out = {"machine": machine, "mode": "quick" if quick else "full", "reps": reps,
           "size": args.size, "msgs_per_trial": msgs_for, "mxgate": mxbin if use_mxgate else None,
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    running = []
    try:
        dns = Unbound(workdir)
        running.append(dns)
        if "core" in parts:
            sink = Sink(workdir, "sink")
            running.append(sink)
            pf = Postfix(workdir, sink.port)
            running.append(pf)
            targets = [("bound", sink.port, None), ("postfix", pf.port, pf.pid)]
            if use_mxgate:
                mx = Mxgate(mxbin, workdir, sink.port, dns.port)
                running.append(mx)
                log(f"mxgate ready in {mx.start():.2f}s")
                targets.append(("mxgate", mx.port, mx.pid))
            out["core"] = trials.core(targets, sink, sessions_list, msgs_for, reps, args.size,
                                      warmup=50 if quick else 500)
            if use_mxgate:
                # Postfix runs one smtpd process per connection (default_process_limit 100),
                # so only mxgate is asked to hold many idle sessions. A fresh process, so
                # that memory freed by the load trials cannot hide the per-connection cost.
                mxi = Mxgate(mxbin, workdir, sink.port, dns.port, name="mxgate-idle")
                running.append(mxi)
                mxi.start()
                out["idle"] = trials.idle_connections(mxi.pid, mxi.port, 200 if quick else 900)
                mxi.stop()
                log(f"idle connections: {out['idle']}")
            if "profile" in parts:
                # fsyncs per message at 1 session (no one to share a commit with) and at
                # 10; the CPU profile of mxgate at both.
                out["profile"] = []
                for psessions, pmsgs in ((1, 100 if quick else 1000), (10, 300 if quick else 3000)):
                    for name, port, pid in targets[1:]:
                        p = profile.fsync_and_cpu(name, port, pid, sink, psessions, pmsgs, args.size,
                                                  workdir, cpu=(name == "mxgate"))
                        p["sessions"] = psessions
                        log(f"profile {name} x{psessions}: fsyncs/msg={p.get('fsyncs_per_message')} "
                            f"{p.get('error', '')}")
                        out["profile"].append(p)
        if "callgrind" in parts and use_mxgate:
            cg_sink = Sink(workdir, "sink-callgrind")
            running.append(cg_sink)
            out["callgrind"] = callgrind.instructions_per_message(mxbin, workdir, cg_sink, dns.port,
                                                                  50 if quick else 500, args.size)
            log(f"callgrind: {out['callgrind']['ir_per_message']} instructions per message")
        if "tls" in parts:
            out["tls"] = run_tls(workdir, dns, mxbin, use_mxgate, quick, reps, args.size, running)
        if "queue" in parts and use_mxgate:
            mxq = Mxgate(mxbin, workdir, free_port(), dns.port, name="mxgate-queue", retry="1h")
            running.append(mxq)
            out["queue"] = trials.queue_scale(mxq, queue_sizes, 300 if quick else 2000, args.size)
            # Up to millions of spool files: not worth keeping once measured.
            shutil.rmtree(os.path.join(mxq.dir, "queue"), ignore_errors=True)
    except BenchError as e:
        log(f"FAILED: {e}")
        out["failure"] = str(e)
    finally:
        for p in reversed(running):
            p.stop()
    out["elapsed_s"] = time.time() - started
    out["log_outcomes"] = log_outcomes(workdir)
    md = render(out, sessions_list)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"results in {workdir}/results.md and results.json ({out['elapsed_s']:.0f}s)")
    return 1 if "failure" in out else 0


def log_outcomes(workdir):
    """status=sent/deferred/bounced counts in each relay's log: every message the
    benchmark counted should be `sent`; anything else is reported beside the numbers."""
    counts = {}
    for name, log in (("postfix", "postfix/maillog"), ("mxgate", "mxgate/mxgate.log")):
        path = os.path.join(workdir, log)
        if not os.path.exists(path):
            continue
        c = {"sent": 0, "deferred": 0, "bounced": 0}
        with open(path, errors="replace") as f:
            for line in f:
                for k in c:
                    if f"status={k}" in line:
                        c[k] += 1
        counts[name] = c
    return counts


def run_tls(workdir, dns, mxbin, use_mxgate, quick, reps, size, running):
    cert, key = os.path.join(workdir, "sink.crt"), os.path.join(workdir, "sink.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=mx.bench.test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    pairs = []
    for tls in (False, True):
        tag = "tls" if tls else "plain"
        sink = Sink(workdir, f"pysink-{tag}", kind="py-tls" if tls else "py", certs=(cert, key))
        running.append(sink)
        pf = Postfix(workdir, sink.port, name=f"postfix-{tag}", tls=tls)
        running.append(pf)
        pairs.append((f"postfix→{tag}", pf.port, pf.pid, sink))
        if tls:
            # Postfix reuses TLS connections only with smtp_tls_connection_reuse = yes
            # (via tlsproxy): the same sink with reuse on shows what reuse is worth.
            pfr = Postfix(workdir, sink.port, name="postfix-tls-reuse", tls=True, tls_reuse=True)
            running.append(pfr)
            pairs.append(("postfix-reuse→tls", pfr.port, pfr.pid, sink))
        if use_mxgate:
            mx = Mxgate(mxbin, workdir, sink.port, dns.port, name=f"mxgate-{tag}")
            running.append(mx)
            mx.start()
            pairs.append((f"mxgate→{tag}", mx.port, mx.pid, sink))
    for name, port, pid, sink in pairs:
        trials.trial(name, port, pid, sink, 4, 50, size)
    return trials.tls(pairs, 10, 300 if quick else 2000, reps, size)


def render(out, sessions_list):
    m = out["machine"]
    parts = [f"## Results ({out['mode']} run, {out['started']}, {out['elapsed_s']:.0f} s)\n",
             f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, "
             f"Postfix {m['postfix']}, Python {m['python']}; one 4 KiB write+fsync of a new file in the "
             f"work directory: {m['fsync_ms']:.2f} ms (median of 100). Messages: {out['size']} bytes payload; "
             f"messages per trial {out['msgs_per_trial']}; {out['reps']} repetition(s), interleaved.\n"]
    if out.get("failure"):
        parts.append(f"**The run failed:** {out['failure']}\n")
    if out.get("log_outcomes"):
        parts.append("Relay logs, core run (status= counts): " + "; ".join(
            f"{n}: {c}" for n, c in out["log_outcomes"].items()) + "\n")
    if "core" in out:
        summary = report.summarise(out["core"])
        head, table = report.core_tables(summary, sessions_list)
        tls_summary = report.summarise(out["tls"], keys=("handshakes_per_s", "sink_cpu_util")) if "tls" in out else {}
        parts += ["### Goals (measured in this run)\n",
                  report.goals_table(summary, sessions_list, out.get("profile", []), tls_summary,
                                     out.get("queue", [])), "",
                  "### Headline: ratios\n", head, "", "### Absolute numbers\n", table, ""]
    if "idle" in out:
        i = out["idle"]
        parts += [f"Idle connections: {i['connections']} SMTP sessions held open after the banner grew "
                  f"mxgate's RSS by {i['rss_per_connection_kib']:.1f} KiB per connection "
                  f"(PSS {i['pss_per_connection_kib']:.1f} KiB).\n"]
    if "profile" in out:
        parts.append("### Profile evidence (extra trials: fsyncs and mxgate CPU at 1 and 10 sessions)\n")
        for p in out["profile"]:
            if "error" in p:
                parts.append(f"- {p['system']}: not profiled ({p['error']})")
                continue
            parts.append(f"- {p['system']} ({p.get('sessions', 10)} sessions): {p['fsyncs']} fsync/fdatasync calls "
                         f"for {p['messages']} messages = "
                         f"**{p['fsyncs_per_message']:.2f} per message**; by process name: {p['fsyncs_by_process']}")
            if p.get("cpu_top"):
                parts += ["", f"  {p['system']} CPU profile, {p.get('sessions')} session(s) (perf, self time, top symbols):", "",
                          "```", p["cpu_top"], "```"]
        parts.append("")
    if "callgrind" in out:
        c = out["callgrind"]
        per = c["ir_per_message"]
        parts += [f"### Instructions per message (callgrind, mxgate, {c['messages']} messages, 1 session)\n",
                  f"{'-' if per is None else format(per, ',.0f')} instructions per message "
                  f"(startup-only run: {c['ir_startup_only']}, with messages: {c['ir_with_messages']}). "
                  "Top functions by self cost:\n", "```", c["top"], "```", ""]
    if "tls" in out:
        summary = report.summarise(out["tls"], keys=("handshakes_per_s", "sink_cpu_util"))
        parts += ["### TLS variant (10 sessions; sink = tlssink.py, plain vs STARTTLS)\n",
                  report.tls_table(summary), ""]
    if "queue" in out:
        parts += ["### Queue scale (mxgate; destination refusing connections)\n",
                  report.queue_table(out["queue"]), ""]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""Summaries: medians over repetitions, ratios, and a Markdown report.

Throughput, CPU and memory are the median over repetitions; latency
percentiles are taken over all samples of all repetitions pooled. A figure
that was not measured (a system skipped, a trial that failed) prints as "-",
never as a guess. It does NOT run anything.
"""

import os
import platform
import statistics
import subprocess

from .trials import percentile


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except OSError:
        pass
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "memory": mem,
            "postfix": postfix, "python": platform.python_version()}


def fsync_cost_ms(directory, rounds=100):
    """Median time of write(4 KiB) + fsync of a new file in `directory`: what one
    durable spool write costs on this disk, before any relay is involved."""
    import time

    times = []
    block = b"x" * 4096
    for i in range(rounds):
        path = os.path.join(directory, f"fsync-probe-{i}")
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, block)
        os.fsync(fd)
        os.close(fd)
        times.append((time.perf_counter() - t0) * 1000.0)
        os.unlink(path)
    return statistics.median(times)


def _median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None and not r.get("error")]
    return statistics.median(vals) if vals else None


def summarise(results, keys=()):
    """Groups trial results by (system, sessions) into one summary row each."""
    groups = {}
    for r in results:
        groups.setdefault((r["system"], r["sessions"]), []).append(r)
    out = {}
    for (system, sessions), rows in groups.items():
        lat = [x for r in rows if not r.get("error") for x in r["latencies_ms"]]
        s = {"system": system, "sessions": sessions, "reps": len(rows),
             "errors": [r["error"] for r in rows if r.get("error")],
             "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "samples": len(lat)}
        for k in ("accepted_per_s", "delivered_per_s", "cpu_s_per_1000", "peak_rss_kib",
                  "peak_pss_kib", "msgs_per_connection") + tuple(keys):
            s[k] = _median(rows, k)
        out[(system, sessions)] = s
    return out


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or not b else a / b


def fx(v):
    """A ratio as "2.50x", or "-" when either side was not measured."""
    return "-" if v is None else f"{v:.2f}x"


def mib(kib):
    return None if kib is None else kib / 1024.0


def core_tables(summary, sessions_list):
    lines = ["| sessions | metric | mxgate / Postfix | mxgate / bound |", "|---|---|---|---|"]
    for s in sessions_list:
        mx, pf, bd = (summary.get((n, s), {}) for n in ("mxgate", "postfix", "bound"))
        for key, label in (("delivered_per_s", "delivered msg/s"), ("accepted_per_s", "accepted msg/s")):
            lines.append(f"| {s} | {label} | {fx(ratio(mx.get(key), pf.get(key)))} | "
                         f"{fx(ratio(mx.get(key), bd.get(key)))} |")
        lines.append(f"| {s} | accept p99 (lower is better) | {fx(ratio(mx.get('p99_ms'), pf.get('p99_ms')))} | - |")
    head = "\n".join(lines)
    rows = ["| system | sessions | accepted msg/s | delivered msg/s | accept p50 ms | accept p99 ms | "
            "CPU s / 1000 msg | peak RSS MiB | peak PSS MiB | msgs / sink connection | latency samples |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sessions_list:
        for n in ("bound", "postfix", "mxgate"):
            r = summary.get((n, s))
            if r is None:
                continue
            rows.append(f"| {n} | {s} | {fmt(r['accepted_per_s'])} | {fmt(r['delivered_per_s'])} | "
                        f"{fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | {fmt(r['cpu_s_per_1000'], '.3f')} | "
                        f"{fmt(mib(r['peak_rss_kib']), '.1f')} | {fmt(mib(r['peak_pss_kib']), '.1f')} | "
                        f"{fmt(r['msgs_per_connection'], '.1f')} | {r['samples']}"
                        + (f" (errors: {'; '.join(r['errors'])})" if r["errors"] else "") + " |")
    return head, "\n".join(rows)


def goals_table(summary, sessions_list, profiles, tls_summary, queue_rows):
    """The figures the spool work is judged by, each beside its goal: mxgate vs Postfix
    and vs the bound (delivered msg/s), CPU µs per relayed message, fsyncs per message,
    accept p99 vs Postfix's, the TLS variant, and queue scale. "-" = not measured."""
    want_ratio = {1: 3.0}
    rows = ["| figure | sessions | measured | goal | met |", "|---|---|---|---|---|"]

    def row(label, sessions, value, goal_text, ok, spec):
        met = "-" if value is None else ("yes" if ok(value) else "**no**")
        rows.append(f"| {label} | {sessions} | {fmt(value, spec)} | {goal_text} | {met} |")

    for s in sessions_list:
        mx, pf, bd = (summary.get((n, s), {}) for n in ("mxgate", "postfix", "bound"))
        goal = want_ratio.get(s, 5.0)
        row("delivered mxgate / Postfix", s, ratio(mx.get("delivered_per_s"), pf.get("delivered_per_s")),
            f"≥ {goal:.0f}×", lambda v, g=goal: v >= g, ".2f")
        row("delivered mxgate / bound", s, ratio(mx.get("delivered_per_s"), bd.get("delivered_per_s")),
            "(share of the machine)", lambda v: True, ".2f")
        cpu = mx.get("cpu_s_per_1000")
        row("mxgate CPU µs / message", s, None if cpu is None else cpu * 1000.0, "≤ 250",
            lambda v: v <= 250, ".0f")
        row("accept p99 mxgate / Postfix", s, ratio(mx.get("p99_ms"), pf.get("p99_ms")), "≤ 0.25",
            lambda v: v <= 0.25, ".2f")
    for p in profiles:
        if p.get("system") != "mxgate" or p.get("fsyncs_per_message") is None:
            continue
        s = p.get("sessions", 10)
        limit = 1.1 if s == 1 else 0.3
        row("mxgate fsyncs / message", s, p["fsyncs_per_message"], f"≤ {limit}", lambda v, g=limit: v <= g, ".2f")
    pf_tls, mx_tls = tls_summary.get(("postfix→tls", 10), {}), tls_summary.get(("mxgate→tls", 10), {})
    row("TLS sink: delivered mxgate / Postfix", 10, ratio(mx_tls.get("delivered_per_s"), pf_tls.get("delivered_per_s")),
        "≥ 5×", lambda v: v >= 5.0, ".2f")
    if queue_rows:
        small, big = queue_rows[0], queue_rows[-1]
        row(f"accepted with {big['queued']:,} queued / with {small['queued']:,}", 10,
            ratio(big.get("accepted_per_s"), small.get("accepted_per_s")), "≥ 0.9", lambda v: v >= 0.9, ".2f")
        row(f"restart with {big['queued']:,} queued → READY, s", "-", big.get("startup_s"), "≤ 5",
            lambda v: v <= 5, ".2f")
        rss, n = big.get("rss_after_restart_kib"), big.get("queued_at_restart")
        per = None if rss is None or not n else rss * 1024.0 / n
        row("RSS after restart / queued message, bytes", "-", per, "≤ 200", lambda v: v <= 200, ".0f")
    return "\n".join(rows)


def tls_table(summary):
    rows = ["| relay → sink | sessions | delivered msg/s | TLS handshakes/s | msgs / connection | "
            "relay CPU s / 1000 msg | sink CPU (cores) | accept p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for (name, s), r in sorted(summary.items()):
        rows.append(f"| {name} | {s} | {fmt(r['delivered_per_s'])} | {fmt(r.get('handshakes_per_s'), '.1f')} | "
                    f"{fmt(r.get('msgs_per_connection'), '.1f')} | {fmt(r['cpu_s_per_1000'], '.3f')} | "
                    f"{fmt(r.get('sink_cpu_util'), '.2f')} | "
                    f"{fmt(r['p99_ms'], '.2f')} |" + (f" errors: {'; '.join(r['errors'])}" if r["errors"] else ""))
    return "\n".join(rows)


def queue_table(rows):
    out = ["| queued | fill msg/s | accepted msg/s | accept p99 ms | RSS after accepts MiB | "
           "queued at restart | startup s | RSS after restart MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['queued']} | {fmt(r['fill_per_s'])} | {fmt(r['accepted_per_s'])} | "
                   f"{fmt(r['p99_ms'], '.2f')} | {fmt(mib(r['rss_after_accept_kib']), '.1f')} | "
                   f"{r['queued_at_restart']} | {fmt(r['startup_s'], '.2f')} | {fmt(mib(r['rss_after_restart_kib']), '.1f')} |")
    return "\n".join(out)

"""One measured trial, and the experiments (core, TLS, queue scale) built from trials.

A trial pushes `msgs` messages of `size` bytes through one target with
`smtp-source -d -s SESSIONS` (persistent sessions, as a relay's connection
cache would), while latency.py samples accept latency over one extra, paced
session. It records:

  accepted msg/s   messages / time until smtp-source finished (every 250 seen)
  delivered msg/s  messages / time until the sink counted all of them
  p50/p99 ms       end of DATA -> 250, from the sampler
  cpu s/1000 msg   the relay's process-tree CPU seconds (procs.py) per 1,000
  peak RSS/PSS     the relay's process-tree memory, sampled every 100 ms

It does NOT judge results; report.py summarises and compares.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from . import procs
from .systems import HERE, BenchError

SENDER = "bench@submit.test"
RCPT = "bench@bench.test"


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100.0 * (len(s) - 1))))
    return s[k]


class LatencySampler:
    def __init__(self, port, size, gap_ms):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "latency.py"), "127.0.0.1", str(port),
             "--size", str(size), "--gap-ms", str(gap_ms), "--to", RCPT, "--sender", SENDER],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        line = self.proc.stderr.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise BenchError(f"latency sampler failed: {line!r} {self.proc.stderr.read()!r}")

    def finish(self):
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            raise BenchError(f"latency sampler: {err.decode(errors='replace')}")
        return json.loads(out)


def smtp_source(port, sessions, msgs, size):
    cmd = ["smtp-source", "-d", "-s", str(sessions), "-m", str(msgs), "-l", str(size),
           "-M", "submit.test", "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}"]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if res.returncode != 0:
        raise BenchError(f"smtp-source failed ({res.returncode}): {res.stderr.decode(errors='replace')[-500:]}")


class DeliveryWatch:
    """Polls the sink's counter file every 2 ms from start, remembering (time, count),
    so the time a target count was reached is known even if the target is learnt later."""

    def __init__(self, sink):
        self.sink = sink
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        # The sink reports only through its counter file: polling is the only way.
        while not self._stop.wait(0.002):
            self.samples.append((time.monotonic(), self.sink.delivered()))

    def reached(self, target, timeout):
        """The monotonic time the count first reached target, or None after timeout."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            samples = self.samples[seen:]
            for t, n in samples:
                if n >= target:
                    self._stop.set()
                    return t
            seen += len(samples)
            if time.monotonic() > deadline:
                self._stop.set()
                return None
            time.sleep(0.01)


def trial(system, port, relay_pid, sink, sessions, msgs, size, gap_ms=10.0, drain_timeout=300.0):
    c0 = sink.counters()
    base = c0.get("mesg", 0)
    cpu0 = procs.cpu_seconds(procs.tree(relay_pid)) if relay_pid else None
    sink_cpu0 = procs.cpu_seconds([sink.pid])
    mem = procs.MemorySampler(relay_pid).start()
    sampler = LatencySampler(port, size, gap_ms)
    watch = DeliveryWatch(sink)
    t0 = time.monotonic()
    error = None
    try:
        smtp_source(port, sessions, msgs, size)
    except BenchError as e:
        error = str(e)
    t1 = time.monotonic()
    lat = sampler.finish()
    total = msgs + lat["count"]
    t2 = watch.reached(base + total, drain_timeout)
    cpu1 = procs.cpu_seconds(procs.tree(relay_pid)) if relay_pid else None
    sink_cpu1 = procs.cpu_seconds([sink.pid])
    mem.stop()
    c1 = sink.counters()
    delivered = c1.get("mesg", 0) - base
    # smtp-sink counts sessions as "sess", tlssink.py as "conn": connections the sink saw.
    conns = (c1.get("sess", 0) + c1.get("conn", 0)) - (c0.get("sess", 0) + c0.get("conn", 0))
    result = {
        "system": system, "sessions": sessions, "msgs": msgs, "sampled": lat["count"],
        "sample_failures": lat["failed"], "error": error,
        "accept_s": t1 - t0,
        "accepted_per_s": total / (t1 - t0),
        "delivered": delivered,
        "delivered_s": (t2 - t0) if t2 else None,
        "sink_connections": conns,
        # Share of one core the sink used: near 1.0 means the sink, not the relay, limits.
        "sink_cpu_util": ((sink_cpu1 - sink_cpu0) / (t2 - t0)) if t2 else None,
        "msgs_per_connection": (delivered / conns) if conns else None,
        "delivered_per_s": (total / (t2 - t0)) if t2 else None,
        "latencies_ms": lat["latencies_ms"],
        "p50_ms": percentile(lat["latencies_ms"], 50),
        "p99_ms": percentile(lat["latencies_ms"], 99),
        "cpu_s_per_1000": ((cpu1 - cpu0) * 1000.0 / total) if relay_pid else None,
        "peak_rss_kib": mem.peak_rss if relay_pid else None,
        "peak_pss_kib": mem.peak_pss if relay_pid else None,
        "hwm_kib": procs.hwm_kib(relay_pid) if relay_pid else None,
    }
    if t2 is None and error is None:
        result["error"] = f"only {delivered} of {total} delivered within {drain_timeout}s"
    return result


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def describe(r):
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    return (f"{r['system']:>8} s={r['sessions']:<3} acc={f(r['accepted_per_s'], '.0f')}/s "
            f"del={f(r['delivered_per_s'], '.0f')}/s p50={f(r['p50_ms'], '.2f')} "
            f"p99={f(r['p99_ms'], '.2f')}ms cpu/1k={f(r['cpu_s_per_1000'], '.3f')}s"
            + (f" ERROR: {r['error']}" if r["error"] else ""))


def core(targets, sink, sessions_list, msgs_for, reps, size, warmup):
    """targets: [(name, port, relay_pid)]. Interleaves A B C, C B A, ... per concurrency."""
    results = []
    for name, port, pid in targets:
        log(f"warm-up {name}")
        trial(name, port, pid, sink, 4, warmup, size)
    for sessions in sessions_list:
        for rep in range(reps):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for name, port, pid in order:
                r = trial(name, port, pid, sink, sessions, msgs_for[sessions], size)
                r["rep"] = rep
                log(describe(r))
                results.append(r)
    return results


def tls(pairs, sessions, msgs, reps, size):
    """pairs: [(name, port, relay_pid, sink)]; reports conns and handshakes per trial."""
    results = []
    for rep in range(reps):
        order = pairs if rep % 2 == 0 else list(reversed(pairs))
        for name, port, pid, sink in order:
            c0 = sink.counters()
            r = trial(name, port, pid, sink, sessions, msgs, size)
            c1 = sink.counters()
            r["rep"] = rep
            r["connections"] = c1.get("conn", 0) - c0.get("conn", 0)
            r["handshakes"] = c1.get("tls", 0) - c0.get("tls", 0)
            dur = r["delivered_s"]
            r["handshakes_per_s"] = (r["handshakes"] / dur) if dur else None
            r["msgs_per_connection"] = (r["delivered"] / r["connections"]) if r["connections"] else None
            log(describe(r) + f" conns={r['connections']} handshakes={r['handshakes']}")
            results.append(r)
    return results


def queue_scale(mx, sizes, msgs, size):
    """mx: an Mxgate whose destination refuses connections. Fills to each size, then
    measures accept rate, memory and restart time with that many messages queued."""
    results = []
    queued = 0
    startup = mx.start()
    log(f"queue-scale: empty start in {startup:.2f}s")
    for n in sizes:
        if n > queued:
            t0 = time.monotonic()
            smtp_source(mx.port, 20, n - queued, size)
            fill = (n - queued) / (time.monotonic() - t0)
            queued = n
        else:
            fill = None
        queued_at_accept = queued
        mem0 = procs.memory_kib([mx.pid])
        sampler = LatencySampler(mx.port, size, 10.0)
        t0 = time.monotonic()
        smtp_source(mx.port, 10, msgs, size)
        acc_s = time.monotonic() - t0
        lat = sampler.finish()
        queued += msgs + lat["count"]
        rss_loaded = procs.memory_kib([mx.pid])[0]
        hwm = procs.hwm_kib(mx.pid)
        mx.stop()
        startup = mx.start()
        rss_start = procs.memory_kib([mx.pid])[0]
        r = {"queued": queued_at_accept, "queued_at_restart": queued, "fill_per_s": fill, "accepted_per_s": (msgs + lat["count"]) / acc_s,
             "p50_ms": percentile(lat["latencies_ms"], 50), "p99_ms": percentile(lat["latencies_ms"], 99),
             "rss_before_kib": mem0[0], "rss_after_accept_kib": rss_loaded, "hwm_kib": hwm,
             "startup_s": startup, "rss_after_restart_kib": rss_start}
        log(f"queue-scale {queued_at_accept}: acc={r['accepted_per_s']:.0f}/s start={startup:.2f}s "
            f"rss={rss_loaded // 1024}MiB restart-rss={rss_start // 1024}MiB")
        results.append(r)
    mx.stop()
    return results


def idle_connections(pid, port, count):
    """Opens `count` SMTP connections that read the banner and then sit idle; returns
    the relay tree's RSS growth per connection in KiB (and the totals)."""
    import socket

    before = procs.memory_kib(procs.tree(pid))
    conns = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            conns.append(s)
        for s in conns:
            if not s.recv(512).startswith(b"220"):
                raise BenchError("idle connection did not get a 220 banner")
        after = procs.memory_kib(procs.tree(pid))
    finally:
        for s in conns:
            s.close()
    return {"connections": count, "rss_before_kib": before[0], "rss_after_kib": after[0],
            "pss_before_kib": before[1], "pss_after_kib": after[1],
            "rss_per_connection_kib": (after[0] - before[0]) / count,
            "pss_per_connection_kib": (after[1] - before[1]) / count}

#!/usr/bin/env python3
"""The storage ceiling of the spool protocol, without any SMTP: THREADS threads each
store MSGS files the way mxgate does (write 4.5 KiB into tmp/, fsync, rename into msg/,
fsync msg/, unlink) and the rate is printed. No group commit: each thread fsyncs msg/
itself, so at 1 thread this is two sequential fsyncs per message.

    python3 bench/fsync_probe.py [--dir /var/tmp/fsync-probe] [--threads 1,10,50] [--msgs 2000]
"""
import argparse
import os
import shutil
import threading
import time


def run(root, threads, msgs):
    per = max(1, msgs // threads)
    data = b"x" * 4500

    def worker(t):
        dfd = os.open(os.path.join(root, "msg"), os.O_RDONLY)
        try:
            for i in range(per):
                tmp = os.path.join(root, "tmp", f"{t}.{i}")
                final = os.path.join(root, "msg", f"{t}.{i}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, data)
                os.fsync(fd)
                os.close(fd)
                os.rename(tmp, final)
                os.fsync(dfd)
                os.unlink(final)
        finally:
            os.close(dfd)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    start = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return threads * per / (time.monotonic() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp/fsync-probe")
    ap.add_argument("--threads", default="1,10,50")
    ap.add_argument("--msgs", type=int, default=2000)
    a = ap.parse_args()
    for sub in ("tmp", "msg"):
        os.makedirs(os.path.join(a.dir, sub), exist_ok=True)
    try:
        for n in (int(x) for x in a.threads.split(",")):
            print(f"threads={n}: {run(a.dir, n, a.msgs):.0f} msg/s")
    finally:
        shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()

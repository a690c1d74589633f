#!/usr/bin/env python3
"""postfix-mta-sts-resolver's own socketmap responder with its in-memory (internal LRU)
cache already holding an `enforce` policy for every benchmark domain, so that every
lookup is a cache hit and no DNS or HTTPS is needed: the cached lookup rate that
bench/socketmap/run.sh compares mxgate's against (docs/benchmarks.md).

Usage: resolver_cached.py PORT DOMAIN-COUNT
Prints "READY" on stdout once it listens; runs until SIGTERM.
"""

import asyncio
import signal
import sys
import time

from postfix_mta_sts_resolver import utils
from postfix_mta_sts_resolver.base_cache import CacheEntry
from postfix_mta_sts_resolver.responder import STSSocketmapResponder


async def main(port, count):
    cfg = utils.populate_cfg_defaults({
        "host": "127.0.0.1",
        "port": port,
        # Entries stay fresh for the whole run: no revalidation lookups.
        "cache_grace": 86400,
        "cache": {"type": "internal", "options": {"cache_size": count * 2}},
    })
    cache = utils.create_cache(cfg["cache"]["type"], cfg["cache"]["options"])
    await cache.setup()
    now = time.time()
    for i in range(count):
        domain = f"d{i}.bench.test"
        body = {"version": "STSv1", "mode": "enforce", "max_age": 86400,
                "mx": [f"mx.{domain}"]}
        await cache.set(domain, CacheEntry(now, "1", body))
    loop = asyncio.get_running_loop()
    responder = STSSocketmapResponder(cfg, loop, cache)
    await responder.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await responder.stop()


if __name__ == "__main__":
    # The daemon uses uvloop when it is installed; so does this harness (its best case).
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))

#!/usr/bin/env bash
# Socketmap cached lookup rate: mxgate against postfix-mta-sts-resolver, same client,
# same policies (docs/benchmarks.md, "Socketmap lookup rate").
#   bench/socketmap/run.sh --setup   create bench/socketmap/.venv with
#                                    postfix-mta-sts-resolver and uvloop (pip)
#   bench/socketmap/run.sh           run (release build of mxgate; 5 s per contender)
# Environment: DOMAINS, CONNECTIONS, SECONDS (see crates/mxgate/benches/socketmap_rate.rs);
# CLUSTER=1 also measures mxgate with [cluster] on a private redis-server and the cost of
# one shared-cache read.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=bench/socketmap/.venv
if [[ "${1:-}" == "--setup" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q postfix-mta-sts-resolver uvloop
    shift
fi
if [[ -z "${MTA_STS_RESOLVER_PYTHON:-}" && -x "$venv/bin/python" ]]; then
    export MTA_STS_RESOLVER_PYTHON="$venv/bin/python"
fi
redis_pid=""
cleanup() { [[ -n "$redis_pid" ]] && kill "$redis_pid" 2>/dev/null || true; }
trap cleanup EXIT
if [[ "${CLUSTER:-}" == "1" ]]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null &
    redis_pid=$!
    for _ in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    export CLUSTER_REDIS="redis://127.0.0.1:$port/0"
fi
exec cargo bench -p mxgate --bench socketmap_rate

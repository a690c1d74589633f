#!/usr/bin/env bash
# mxgate benchmark suite: see docs/benchmarks.md.
#   bench/run.sh --quick            smoke run (under a minute)
#   bench/run.sh                    full run (~10-15 minutes)
#   bench/run.sh --build [ARGS]     first `cargo build --release -p mxgate`
# All other arguments go to bench/run.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--build" ]]; then
    shift
    cargo build --release -p mxgate
fi
for tool in smtp-source smtp-sink postfix unbound openssl python3; do
    command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin"
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
exec python3 bench/run.py "$@"

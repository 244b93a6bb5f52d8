#!/usr/bin/env bash
# The 1-connection latency of the benchmark's three targets measured with wrk instead of the
# benchmark's own client (BENCHMARKS.md, "The 1-connection figures against wrk").
#
#   cargo build --release -p claudeflare-bench -p claudeflare-server
#   bench/wrk.sh                       # 3 rounds, 4 s per target, the scheduler places processes
#   PIN=1 bench/wrk.sh                 # wrk on core 0, the three servers on core 1
#
# Prints the p50 of each target, round by round. Needs wrk, curl and python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${CARGO_TARGET_DIR:-$here/../target}/release"
dir="$(mktemp -d)"
server=() client=()
if [ -n "${PIN:-}" ]; then server=(taskset -c 1) client=(taskset -c 0); fi
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
address() { for _ in $(seq 50); do grep -o 'http://[0-9.:]*' "$1" && return; sleep 0.1; done; exit 1; }

"${server[@]}" "$bin/claudeflare-bench" mock > "$dir/mock.out" & pids+=($!)
mock="$(address "$dir/mock.out" | head -1)"
"${server[@]}" "$bin/claudeflare-bench" bare "$mock" > "$dir/bare.out" & pids+=($!)
bare="$(address "$dir/bare.out" | head -1)"
export CLAUDEFLARE_CONFIG_PATH="$dir/claudeflare.json" CLAUDEFLARE_UPSTREAM_URL="$mock" NO_COLOR=1
for n in 1 2 3; do "$bin/claudeflare-server" add "account-$n" --api-key "sk-ant-api03-bench-$n" >/dev/null; done
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
env ${SERVER_ENV:-} PORT="$port" "${server[@]}" "$bin/claudeflare-server" 2> "$dir/claudeflare.log" >/dev/null & pids+=($!)
claudeflare="http://127.0.0.1:$port"
for _ in $(seq 50); do curl -sf -o /dev/null "$claudeflare/health" && break; sleep 0.1; done

p50() {
    "${client[@]}" wrk -t1 -c1 -d"${SECONDS_PER_TARGET:-4}"s --latency -s "$here/wrk-post.lua" "$1/v1/messages" \
        | awk '/^ +50%/ {print $2}'
}
for round in $(seq "${ROUNDS:-3}"); do
    echo "round $round: direct $(p50 "$mock")  bare proxy $(p50 "$bare")  claudeflare $(p50 "$claudeflare")"
done

-- The benchmark's JSON request, for wrk (bench/wrk.sh, and claudeflare-bench's latency rounds
-- when wrk is installed). The client key comes from CLAUDEFLARE_BENCH_KEY when one is required.
wrk.method = "POST"
wrk.body   = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = os.getenv("CLAUDEFLARE_BENCH_KEY") or "client-key"
wrk.headers["anthropic-version"] = "2023-06-01"

-- One line for claudeflare-bench: responses, p50, p90, p99 (µs), errors.
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("claudeflare-bench %d %d %d %d %d\n", summary.requests,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        e.connect + e.read + e.write + e.status + e.timeout))
end

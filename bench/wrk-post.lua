wrk.method = "POST"
wrk.body   = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "client-key"
wrk.headers["anthropic-version"] = "2023-06-01"

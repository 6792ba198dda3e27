-- wrk script for the AetherGate benchmark (bench/run.py): POSTs a small
-- non-stream chat completion and prints one machine-readable summary line.
--
-- Environment:
--   BENCH_BODY        request body (JSON)
--   BENCH_AUTH        Authorization header value (empty: none, for the direct path)
--   BENCH_STOP_AFTER  if set, each wrk thread stops after this many responses (soak)

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local stop_after = tonumber(os.getenv("BENCH_STOP_AFTER") or "")
if stop_after then
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen == stop_after then
      -- bench/run.py reads this line and sends wrk SIGINT, which ends the run
      -- (and its timing) now instead of at the -d bound.
      io.write("BENCH_STOPPED\n")
      io.flush()
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end

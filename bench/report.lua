-- wrk script: one endpoint, a random primary key per request, a JSON summary at the end.
--
--   wrk -c 200 -d 10s -s report.lua http://127.0.0.1:PORT -- GET /pk/ 1000
--
-- Arguments after "--": the method, the path, and (optional) how many keys to draw
-- from: the path then gets a random key in [1, keys] appended.
-- done() prints one line "WRK_JSON {...}" with the counts, the error kinds and the
-- latency percentiles in microseconds (wrk's own histogram, p99.9 included).

local method = "GET"
local prefix = "/"
local keys = 0

function init(args)
   method = args[1] or method
   prefix = args[2] or prefix
   keys = tonumber(args[3] or "0")
   -- Each wrk thread gets its own Lua state: seed them apart.
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
   local target = prefix
   if keys > 0 then
      target = prefix .. math.random(1, keys)
   end
   return wrk.format(method, target)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, '
      .. '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end

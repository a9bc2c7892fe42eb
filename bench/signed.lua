-- wrk script: send pre-signed webhook deliveries, each once, and count what came back.
--
--   wrk -t N ... -s bench/signed.lua URL -- <requests file> <path> <expected status> <N>
--
-- The requests file is written by bench/signed_requests.py (one delivery a line:
-- webhook-id, timestamp, signature, body, tab-separated). Thread i of n sends only the
-- lines whose number is i mod n, so no delivery is sent twice while the file lasts; when
-- a thread runs out it starts again at its first line and counts a wrap (for ingest those
-- repeats are duplicates, answered 200, and so show up as unexpected statuses).
--
-- done() prints one line starting with "WRKJSON " that bench/ingest.py parses:
-- requests, duration, latency percentiles (microseconds), socket errors, the status
-- counts and the number of unexpected statuses and wraps.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

function init(args)
   local file, path = args[1], args[2]
   expected_status = tonumber(args[3])
   -- setup() runs just before each thread's init(), so the thread count comes as an argument.
   local thread_total = tonumber(args[4])
   requests = {}
   local line_number = 0
   for line in io.lines(file) do
      if line_number % thread_total == thread_index then
         local id, stamp, signature, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         requests[#requests + 1] = wrk.format("POST", path, {
            ["Content-Type"] = "application/json",
            ["webhook-id"] = id,
            ["webhook-timestamp"] = stamp,
            ["webhook-signature"] = signature,
         }, body)
      end
      line_number = line_number + 1
   end
   next_index = 0
   wraps = 0
   unexpected = 0
   statuses = {}
end

function request()
   next_index = next_index + 1
   if next_index > #requests then
      next_index = 1
      wraps = wraps + 1
   end
   return requests[next_index]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status ~= expected_status then
      unexpected = unexpected + 1
   end
end

function done(summary, latency)
   local total_unexpected, total_wraps = 0, 0
   local merged = {}
   for _, thread in ipairs(threads) do
      total_unexpected = total_unexpected + thread:get("unexpected")
      total_wraps = total_wraps + thread:get("wraps")
      for status, count in pairs(thread:get("statuses")) do
         merged[status] = (merged[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(merged) do
      parts[#parts + 1] = string.format('"%d": %d', status, count)
   end
   local errors = summary.errors
   io.write(string.format(
      'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "socket_errors": {"connect": %d, '
      .. '"read": %d, "write": %d, "timeout": %d}, "statuses": {%s}, "unexpected": %d, '
      .. '"wraps": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, errors.connect, errors.read,
      errors.write, errors.timeout, table.concat(parts, ", "), total_unexpected, total_wraps))
end

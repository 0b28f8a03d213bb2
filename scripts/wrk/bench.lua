-- The load of `examples/bench_http.rs`, one script for every figure so the ceiling and the
-- engine are driven alike. Arguments after wrk's `--`:
--
--   body   THREADS FILE [TAG]  POST FILE's bytes to the URL's path; each `{{unique}}` in it becomes
--                              TAG-THREAD-N, unique per request (a new credentialRef each time)
--   paths  THREADS FILE        GET the paths listed in FILE (one a line), each thread from its own
--                              offset, round and round
--   signed THREADS PREFIX      POST the pre-signed requests of PREFIX.THREAD (lines of
--                              delivery-id TAB signature TAB body): Lua cannot compute HMACs.
--                              Never repeats a line; if they run out it wraps and counts the
--                              requests sent again as `repeats`
--
-- Headers common to every request (Authorization, Content-Type) come with wrk's -H.
-- done() prints one line: `BENCH_RESULT {json}` with requests, duration, statuses, non-2xx,
-- socket errors and latency percentiles (ms), aggregated over the threads.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local mode, method, path
local body, prefix, suffix, tag
local items, cursor = {}, 0
statuses, non2xx, repeats = {}, 0, 0

local function read_file(name)
   local file = assert(io.open(name, "rb"))
   local content = file:read("*a")
   file:close()
   return content
end

function init(args)
   mode = args[1]
   local nthreads = tonumber(args[2])
   local file = args[3]
   path = wrk.path
   if mode == "body" then
      method = "POST"
      body = read_file(file)
      local s, e = body:find("{{unique}}", 1, true)
      if s then
         prefix, suffix = body:sub(1, s - 1), body:sub(e + 1)
         tag = (args[4] or "r") .. "-" .. id .. "-"
      end
   elseif mode == "paths" then
      method = "GET"
      for line in io.lines(file) do
         if #line > 0 then table.insert(items, line) end
      end
      cursor = math.floor(#items * id / nthreads)
   elseif mode == "signed" then
      method = "POST"
      for line in io.lines(file .. "." .. id) do
         local delivery, signature, payload = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
         if delivery then
            -- wrk.format takes these instead of wrk.headers (the -H ones), not with them. A vendor
            -- sends no bearer token (and one without webhooks.deliveries.ingest is refused)
            local headers = {}
            for name, value in pairs(wrk.headers) do
               if name:lower() ~= "authorization" then headers[name] = value end
            end
            headers["X-GitHub-Event"] = "push"
            headers["X-GitHub-Delivery"] = delivery
            headers["X-Hub-Signature-256"] = signature
            table.insert(items, { headers = headers, body = payload })
         end
      end
   else
      error("unknown mode " .. tostring(mode))
   end
end

local counter = 0

function request()
   counter = counter + 1
   if mode == "body" then
      if prefix then
         return wrk.format(method, path, nil, prefix .. tag .. counter .. suffix)
      end
      return wrk.format(method, path, nil, body)
   elseif mode == "paths" then
      cursor = cursor % #items + 1
      return wrk.format(method, items[cursor])
   else
      if cursor >= #items then cursor = 0 end
      cursor = cursor + 1
      if counter > #items then repeats = repeats + 1 end
      local item = items[cursor]
      return wrk.format(method, path, item.headers, item.body)
   end
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status < 200 or status >= 300 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local all_statuses, all_non2xx, all_repeats = {}, 0, 0
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses") or {}) do
         all_statuses[status] = (all_statuses[status] or 0) + n
      end
      all_non2xx = all_non2xx + (thread:get("non2xx") or 0)
      all_repeats = all_repeats + (thread:get("repeats") or 0)
   end
   local parts = {}
   for status, n in pairs(all_statuses) do
      table.insert(parts, string.format('"%d":%d', status, n))
   end
   local e = summary.errors
   local function ms(us) return us / 1000.0 end
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"durationUs":%d,"bytes":%d,"statuses":{%s},"non2xx":%d,"repeats":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latencyMs":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"max":%.3f,"mean":%.3f}}\n',
      summary.requests, summary.duration, summary.bytes, table.concat(parts, ","), all_non2xx, all_repeats,
      e.connect, e.read, e.write, e.status, e.timeout,
      ms(latency:percentile(50)), ms(latency:percentile(90)), ms(latency:percentile(99)), ms(latency.max),
      ms(latency.mean)))
end

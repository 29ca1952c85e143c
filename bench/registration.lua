-- wrk script for bench/registration.py.
--   wrk ... -s bench/registration.lua <url> -- register <run-prefix> <app-key>
--   wrk ... -s bench/registration.lua <url> -- checkin <run-prefix> <tokens-file>
-- "register" POSTs /v1/devices with an installation id and push token unique to the
-- request; "checkin" PATCHes /v1/devices/me, cycling through the device tokens in
-- the file (one a line). done() prints one line "RESULT {json}" for the driver.

local threads = {}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  mode = args[1]
  prefix = args[2]
  if mode == "register" then
    headers = {["Authorization"] = "Bearer " .. args[3], ["Content-Type"] = "application/json"}
  else
    tokens = {}
    for line in io.lines(args[3]) do
      table.insert(tokens, {["Authorization"] = "Bearer " .. line, ["Content-Type"] = "application/json"})
    end
  end
end

function request()
  counter = counter + 1
  if mode == "register" then
    local unique = string.format("%s-%d-%d", prefix, thread_id, counter)
    local platform = (counter % 3 == 0) and "ios" or "android"
    local body = string.format(
      '{"installation_id":"bench-%s","platform":"%s","os_version":"14.1","device_model":"Pixel 8",' ..
      '"app_version":"5.2.0","locale":"id-ID","timezone":"Asia/Jakarta",' ..
      '"push_token":"fcm:%s:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx","push_permission":"granted"}',
      unique, platform, unique)
    return wrk.format("POST", "/v1/devices", headers, body)
  end
  local body = string.format('{"app_version":"5.2.%d","os_version":"14.1"}', counter % 7)
  return wrk.format("PATCH", "/v1/devices/me", tokens[(counter % #tokens) + 1], body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end

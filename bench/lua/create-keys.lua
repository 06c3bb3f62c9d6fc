-- Creates access keys through the management API as fast as the store goes,
-- writing each returned token (one a line) to the file in KEYS_OUT.
-- env: ADMIN_TOKEN, KEYS_OUT. The harness stops wrk once the file holds
-- enough lines (the file is line-buffered for that).
local admin = os.getenv("ADMIN_TOKEN")
local out = nil
local n = 0

function init(args)
  out = io.open(os.getenv("KEYS_OUT"), "a")
  out:setvbuf("line")
end

function request()
  n = n + 1
  local body = string.format('{"name":"bench-%d-%d"}', math.random(1, 1000000000), n)
  return wrk.format("POST", "/access-keys", {
    ["authorization"] = "Bearer " .. admin,
    ["content-type"] = "application/json",
  }, body)
end

function response(status, headers, body)
  if status == 201 then
    local token = body:match('"token"%s*:%s*"([^"]+)"')
    if token then
      out:write(token, "\n")
    end
  end
end

-- Benchmark traffic for wrk (one thread): the same request every time, except
-- for the access key, taken from a tokens file (one a line) and cycled from an
-- offset, so a pool of N keys gives N distinct keys before any repeats.
-- env: BENCH_METHOD (POST), BENCH_PATH, BENCH_BODY_FILE (optional),
--      BENCH_TOKENS_FILE (optional), BENCH_TOKEN_OFFSET (0).
local method = os.getenv("BENCH_METHOD") or "POST"
local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
local body = nil
local tokens = {}
local count = 0
local i = 0
local fixed = nil
local head, tail

local f = os.getenv("BENCH_BODY_FILE")
if f and f ~= "" then
  local h = assert(io.open(f, "rb"))
  body = h:read("*a")
  h:close()
end
local t = os.getenv("BENCH_TOKENS_FILE")
if t and t ~= "" then
  for line in io.lines(t) do
    if line ~= "" then
      count = count + 1
      tokens[count] = line
    end
  end
end
i = tonumber(os.getenv("BENCH_TOKEN_OFFSET") or "0")

local headers = { ["host"] = "bench" }
if body then
  headers["content-type"] = "application/json"
end

if count <= 1 then
  if count == 1 then
    headers["authorization"] = "Bearer " .. tokens[1]
  end
  fixed = wrk.format(method, path, headers, body)
else
  -- Split a formatted request around a marker so each request is two concatenations.
  headers["authorization"] = "Bearer @@TOKEN@@"
  local template = wrk.format(method, path, headers, body)
  local s, e = template:find("@@TOKEN@@", 1, true)
  head = template:sub(1, s - 1)
  tail = template:sub(e + 1)
end

function request()
  if fixed then
    return fixed
  end
  local token = tokens[(i % count) + 1]
  i = i + 1
  return head .. token .. tail
end

-- Store lookups for wrk (one thread): GET /v1/lookup/<digest>, cycling the
-- digests of a file (one a line), with the gateway token.
-- env: BENCH_DIGESTS_FILE, BENCH_GATEWAY_TOKEN.
local digests = {}
local count = 0
for line in io.lines(os.getenv("BENCH_DIGESTS_FILE")) do
  if line ~= "" then
    count = count + 1
    digests[count] = line
  end
end
local i = 0
local headers = { ["host"] = "bench", ["authorization"] = "Bearer " .. os.getenv("BENCH_GATEWAY_TOKEN") }

request = function()
  i = i % count + 1
  return wrk.format("GET", "/v1/lookup/" .. digests[i], headers)
end

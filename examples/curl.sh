#!/usr/bin/env bash
# One OpenAI-format chat completion through keygate with curl; prints the reply
# text (the whole JSON answer if python3 is not there, or on an error).
#   KEYGATE_URL=http://127.0.0.1:10000 KEYGATE_ACCESS_KEY=kg-... examples/curl.sh
set -euo pipefail
: "${KEYGATE_ACCESS_KEY:?set KEYGATE_ACCESS_KEY to a keygate access key}"
url="${KEYGATE_URL:-http://127.0.0.1:10000}"
answer="$(curl -sS --fail-with-body "${url%/}/v1/chat/completions" \
  -H "Authorization: Bearer ${KEYGATE_ACCESS_KEY}" \
  -H "Content-Type: application/json" \
  -d "{\"model\": \"${KEYGATE_MODEL:-gpt-4o}\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello in one sentence.\"}]}")" \
  || { echo "$answer" >&2; exit 1; }
if command -v python3 >/dev/null; then
  printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
else
  printf '%s\n' "$answer"
fi

#!/usr/bin/env bash
# The main job, end to end on the embedded defaults: start hpo-service (SQLite file hpo.db, a
# local Ray, the offline MiniLM), submit the example study over REST, follow it, print the best
# configuration. `make demo` runs this after installing; HPO_PORT picks the port (8000).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
port=${HPO_PORT:-8000}
server="http://127.0.0.1:${port}"
export HPO_SERVER_URL="$server" HPO_DATA_ROOTS="${HPO_DATA_ROOTS:-$PWD/examples}"

"$bin/hpo" serve --port "$port" > .hpo-demo-server.log 2>&1 &
service=$!
trap 'kill "$service" 2>/dev/null; wait "$service" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  "$bin/python" -c "import httpx, sys; httpx.get('$server/healthz').raise_for_status()" \
    2>/dev/null && break
  kill -0 "$service" 2>/dev/null || { cat .hpo-demo-server.log; exit 1; }
  sleep 0.5
done
echo "hpo-service is up at $server (API docs $server/docs, dashboard $server/dashboard)"

"$bin/hpo" delete sentiment-minilm 2>/dev/null || true   # the previous demo's run, if any
"$bin/hpo" submit examples/sentiment.yaml --wait
"$bin/hpo" trials sentiment-minilm
echo "Best configuration:"
"$bin/hpo" best sentiment-minilm --format yaml
echo "Results are in hpo.db: \`$bin/hpo serve\` and open $server/dashboard to browse them."

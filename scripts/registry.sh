#!/usr/bin/env bash
# Starts Debian's docker-registry (distribution 2.8) on 127.0.0.1:PORT with
# filesystem storage under DIR, in the background; prints its pid.
#   scripts/registry.sh DIR PORT
set -euo pipefail
dir=$1 port=$2
mkdir -p "$dir/storage"
cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $dir/storage}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then echo "$pid"; exit 0; fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/registry.log" >&2; exit 1; }
  sleep 0.1
done
echo "registry.sh: registry on port $port did not answer" >&2
kill "$pid"; exit 1

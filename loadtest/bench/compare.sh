#!/usr/bin/env bash
# Side-by-side benchmark: berth vs Debian's docker-registry (CNCF distribution 2.8), with
# nginx (sendfile) serving berth's own blob files as the ceiling, all in one run on loopback.
# Usage: loadtest/bench/compare.sh [OUT_DIR]     (needs: docker-registry nginx wrk curl)
# Every load step is bounded by duration or count and stops by itself.
set -euo pipefail
T=${CARGO_TARGET_DIR:-$HOME/.cache/berth-target}/release
OUT=${1:-/tmp/berth-bench}
DUR=${DUR:-6s}
mkdir -p "$OUT"; WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
BERTH=http://127.0.0.1:5102 DREG=http://127.0.0.1:5101 NGINX=http://127.0.0.1:5103

cat > "$WORK/dr.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/dr-data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5101}
YML
docker-registry serve "$WORK/dr.yml" 2>"$OUT/docker-registry.log" &
DR_PID=$!
BERTH_LOG=warn "$T/berth" serve --listen 127.0.0.1:5102 --data-dir "$WORK/berth-data" 2>"$OUT/berth.log" &
BERTH_PID=$!
sleep 1
# nginx serves /v2/<repo>/blobs/sha256:<hex> straight from berth's blob files (sendfile), and
# answers /v2/ so that berth-loadtest can drive it too (its setup only HEADs blobs that the
# berth run before it stored).
cat > "$WORK/nginx.conf" <<NGX
user root; worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  server { listen 127.0.0.1:5103;
    location = /v2/ { default_type application/json; return 200 '{}'; }
    location ~ ^/v2/.+/blobs/sha256:(..)(.+)\$ { default_type application/octet-stream;
      alias $WORK/berth-data/blobs/sha256/\$1/\$1\$2; } } }
NGX
nginx -c "$WORK/nginx.conf" &
sleep 0.5

rss() { echo "$(ps -o rss= -p "$1" | tr -d ' ') KiB"; }
LT="$T/berth-loadtest"
run() { local name=$1; shift; echo "### $name: berth-loadtest $*" | tee -a "$OUT/summary.txt"
  "$LT" "$@" --target $DREG --target $BERTH -q --json "$OUT/$name.json" | tee -a "$OUT/summary.txt"
  echo "RSS after $name: docker-registry $(rss $DR_PID), berth $(rss $BERTH_PID)" | tee -a "$OUT/summary.txt"; }
run_nginx() { local name=$1; shift; echo "### $name: berth-loadtest $* (A nginx, B berth)" | tee -a "$OUT/summary.txt"
  "$LT" "$@" --target $NGINX --target $BERTH -q --json "$OUT/$name.json" | tee -a "$OUT/summary.txt"; }
wrk_blob() { # name size conns: pushes a blob to berth, then wrk against berth and nginx
  local name=$1 size=$2 conns=$3 f="$WORK/$1.bin"
  head -c "$size" /dev/urandom > "$f"; local d="sha256:$(sha256sum "$f" | cut -d' ' -f1)"
  curl -sf -X POST --data-binary @"$f" -H "content-type: application/octet-stream" "$BERTH/v2/wrk/blobs/uploads/?digest=$d" -o /dev/null
  # One GET first: both servers then read the same file from a warm page cache (berth drops
  # an upload's pages once they are written back, so a fresh blob starts cold).
  curl -sf "$BERTH/v2/wrk/blobs/$d" -o /dev/null
  for target in "berth $BERTH" "nginx $NGINX"; do set -- $target
    echo "### wrk $name -> $1: wrk -t2 -c$conns -d$DUR $2/v2/wrk/blobs/$d" | tee -a "$OUT/summary.txt"
    wrk -t2 -c"$conns" -d"$DUR" --latency "$2/v2/wrk/blobs/$d" | grep -E "Requests/sec|Transfer/sec|  50%|  99%" | tee -a "$OUT/summary.txt"
  done; rm -f "$f"; }

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores" > "$OUT/summary.txt"
echo "RSS idle: docker-registry $(rss $DR_PID), berth $(rss $BERTH_PID)" | tee -a "$OUT/summary.txt"
run blob-get-4k   blob-get -s 4KiB --count 64 -c 16 -d "$DUR" --warmup 1s
run blob-get-256m blob-get -s 256MiB -c 4 -d "$DUR" --warmup 1s
run_nginx blob-get-4k-nginx   blob-get -s 4KiB --count 64 -c 16 -d "$DUR" --warmup 1s
run_nginx blob-get-256m-nginx blob-get -s 256MiB -c 4 -d "$DUR" --warmup 1s
run small         small -c 16 -d "$DUR"
run pull          pull -s 16MiB --layers 4 -c 4 -d "$DUR" --warmup 1s --plot "$OUT/pull.svg"
run push-256m     push -s 256MiB --layers 1 -c 1 -n 4 --upload-mode monolithic
run push-chunked  push -s 64MiB --layers 1 -c 2 -n 8 --upload-mode chunked --chunk-size 8MiB
run push-16k      push -s 16KiB --layers 10 -c 4 -n 100 --upload-mode monolithic
run list          list --count 50 --page-size 10 -d "$DUR"
wrk_blob 4k 4096 16
wrk_blob 256m 268435456 4
echo "RSS end: docker-registry $(rss $DR_PID), berth $(rss $BERTH_PID)" | tee -a "$OUT/summary.txt"

#!/usr/bin/env bash
# A/B of blob GETs against nginx on the same files: BIN=path/to/berth LABEL=x loadtest/bench/wrk-ab.sh
# (4 KiB with 16 connections and 256 MiB with 4, two rounds each, wrk; bounded by DUR).
set -euo pipefail
BIN=${BIN:?}; LABEL=${LABEL:-run}; DUR=${DUR:-5s}; PORT=${PORT:-5202}; NPORT=$((PORT+1))
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$WORK"' EXIT
BERTH_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" 2>"$WORK/berth.log" & BP=$!
cat > "$WORK/nginx.conf" <<NGX
user root; worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  server { listen 127.0.0.1:$NPORT;
    location ~ ^/v2/.+/blobs/sha256:(..)(.+)\$ { default_type application/octet-stream;
      alias $WORK/data/blobs/sha256/\$1/\$1\$2; } } }
NGX
nginx -c "$WORK/nginx.conf" & sleep 1
for spec in "4k 4096 16" "256m 268435456 4"; do set -- $spec; name=$1 size=$2 c=$3
  f=$WORK/$name.bin; head -c $size /dev/urandom > $f; d="sha256:$(sha256sum $f | cut -d' ' -f1)"
  curl -sf -X POST --data-binary @$f -H 'content-type: application/octet-stream' "http://127.0.0.1:$PORT/v2/wrk/blobs/uploads/?digest=$d" -o /dev/null
  # One GET first: both servers then read the same file from a warm page cache (berth drops
  # an upload's pages once they are written back, so a fresh blob starts cold).
  curl -sf "http://127.0.0.1:$PORT/v2/wrk/blobs/$d" -o /dev/null
  for r in 1 2; do for t in "berth $PORT" "nginx $NPORT"; do set -- $t
    out=$(wrk -t2 -c$c -d$DUR --latency "http://127.0.0.1:$2/v2/wrk/blobs/$d")
    echo "$LABEL $name $1 r$r $(echo "$out" | awk '/Requests\/sec/{print "req/s="$2} /Transfer\/sec/{print "xfer="$2} / 99%/{print "p99="$2}' | tr '\n' ' ')"
  done; done
done
echo "$LABEL rss_kib=$(ps -o rss= -p $BP)"

#!/usr/bin/env bash
# before (main's release berth) vs after (engine branch release berth): push 1000 x 16 KiB
set -euo pipefail
AFTER=$HOME/.cache/berth-target-engine/release/berth
rm -rf /tmp/engine-lt-before /tmp/engine-lt-after
/tmp/engine-berth-before serve --listen 127.0.0.1:5101 --data-dir /tmp/engine-lt-before 2>/tmp/engine-lt-before.log &
B=$!
$AFTER serve --listen 127.0.0.1:5102 --data-dir /tmp/engine-lt-after 2>/tmp/engine-lt-after.log &
A=$!
trap 'kill $B $A 2>/dev/null || true' EXIT
for p in 5101 5102; do for i in $(seq 50); do curl -sf http://127.0.0.1:$p/healthz >/dev/null && break; sleep 0.1; done; done
grep -h "engine" /tmp/engine-lt-after.log || true
/tmp/engine-loadtest push --target http://127.0.0.1:5101 --target http://127.0.0.1:5102 -s 16KiB --layers 10 -c 4 -n 100 --upload-mode monolithic --rounds 4
ps -o pid,rss,cmd -p $B,$A
grep VmHWM /proc/$B/status /proc/$A/status

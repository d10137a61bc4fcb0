#!/usr/bin/env bash
# RSS of a release berth while a 4 GiB blob is pushed and another 4 GiB blob is pulled at once.
set -euo pipefail
BIN=${BIN:-$HOME/.cache/berth-target/release/berth}; W=${WORK:-/tmp/berth-mem}; mkdir -p $W; PORT=5311
rm -rf $W/data; BERTH_LOG=warn $BIN serve --listen 127.0.0.1:$PORT --data-dir $W/data 2>$W/berth.log & BP=$!
trap 'kill $BP 2>/dev/null' EXIT; sleep 1
[ -f $W/a.bin ] || head -c 4294967296 /dev/urandom > $W/a.bin
[ -f $W/b.bin ] || head -c 4294967296 /dev/urandom > $W/b.bin
[ -f $W/a.sha ] || sha256sum $W/a.bin | cut -d' ' -f1 > $W/a.sha
[ -f $W/b.sha ] || sha256sum $W/b.bin | cut -d' ' -f1 > $W/b.sha
A=sha256:$(cat $W/a.sha); B=sha256:$(cat $W/b.sha)
echo "idle VmRSS: $(grep VmRSS /proc/$BP/status)"
curl -sf -X POST -T $W/a.bin -H 'content-type: application/octet-stream' "http://127.0.0.1:$PORT/v2/mem/blobs/uploads?digest=$A" -o /dev/null
echo "after push A: $(grep -E 'VmRSS|VmHWM' /proc/$BP/status | tr '\n' ' ')"
max=0; ( while kill -0 $BP 2>/dev/null; do r=$(awk '/VmRSS/{print $2}' /proc/$BP/status); echo $r; sleep 0.2; done > $W/rss.txt ) & SAMPLER=$!
curl -sf -X POST -T $W/b.bin -H 'content-type: application/octet-stream' "http://127.0.0.1:$PORT/v2/mem/blobs/uploads?digest=$B" -o /dev/null & PUSH=$!
curl -sf "http://127.0.0.1:$PORT/v2/mem/blobs/$A" | sha256sum | cut -d' ' -f1 > $W/pulled.sha & PULL=$!
wait $PUSH; wait $PULL; kill $SAMPLER
echo "pulled digest ok: $( [ "$(cat $W/pulled.sha)" = "$(cat $W/a.sha)" ] && echo yes || echo NO)"
echo "pushed B: $(curl -s -o /dev/null -w '%{http_code}' -I http://127.0.0.1:$PORT/v2/mem/blobs/$B)"
echo "max VmRSS during push+pull: $(sort -n $W/rss.txt | tail -1) KiB; samples $(wc -l < $W/rss.txt); $(grep VmHWM /proc/$BP/status)"

#!/bin/sh
# Runs one fuzz target the way it was run on the 2-core development machine:
#   scripts/run.sh TARGET [SECONDS]   (default 1800), from fuzz/.
# New corpus entries go to corpus/TARGET (git-ignored); seeds/TARGET is read too.
# libFuzzer's own log (with -jobs it goes to fuzz-0.log) ends up in logs/TARGET.log.
set -u
t=$1
secs=${2:-1800}
cd "$(dirname "$0")/.."
mkdir -p "corpus/$t" logs
dict=""
[ -f "dicts/$t.dict" ] && dict="-dict=dicts/$t.dict"
rm -f fuzz-0.log
start=$(date +%s)
seeds="seeds/$t"
[ -d "$seeds" ] || seeds="seeds/mqtt_packets"
RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz run "$t" "corpus/$t" "$seeds" -- \
  -jobs=1 -workers=1 -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
  -max_total_time="$secs" -print_final_stats=1 $dict > "logs/$t.driver.log" 2>&1
rc=$?
end=$(date +%s)
[ -f fuzz-0.log ] && mv fuzz-0.log "logs/$t.log"
echo "target=$t rc=$rc seconds=$((end - start)) start=$(date -u -d @"$start" +%FT%TZ) end=$(date -u -d @"$end" +%FT%TZ)" >> logs/runs.txt

#!/usr/bin/env bash
# Counts the instructions chatd spends per stored message, under valgrind's callgrind: stable
# from run to run where CPU seconds are not (on the 2-core reference machine, a neighbour's
# load moves them by 30% or more; see BENCHMARKS.md).
#
#   scripts/callgrind-bench.sh [bench chatd options…]
#   scripts/callgrind-bench.sh --database-url postgres://postgres@127.0.0.1:5432/test
#
# Runs `bench chatd` twice with 100 pairs, 1 and 100 messages per pair, each against a chatd
# started under callgrind, and prints (instructions of the long run - the short one) / 9,900:
# what the 9,900 extra messages cost, with starting, setting up users and connecting taken
# out. chatd runs ~50× slower under valgrind, so the bridge is always saturated and batches
# are large: this is the cost per message at saturation, not at a moderate rate. Only
# chatd's own instructions are counted (PostgreSQL's are not).
#
# Needs valgrind (Debian: valgrind) and a release build (`cargo build --release --bin chatd
# --bin bench`); BUILD=dir picks another directory holding both binaries. The callgrind
# files are left in $OUT (default target/callgrind) for callgrind_annotate.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD:-$root/target/release}"
out="${OUT:-$root/target/callgrind}"
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

# One run: bench and a wrapper named chatd (bench starts the chatd next to it) that starts
# the real one under callgrind. bench ends chatd with SIGKILL, which valgrind cannot catch,
# so the counts are dumped (callgrind_control) before valgrind is stopped.
run() {
    local messages=$1
    shift
    local dir="$out/$messages"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$build/bench" "$dir/bench"
    cp "$build/chatd" "$dir/chatd.real"
    cat >"$dir/chatd" <<EOF
#!/usr/bin/env bash
valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out.%p" --dump-line=no "$dir/chatd.real" "\$@" 2>>"$dir/valgrind.log" &
echo \$! >"$dir/valgrind.pid"
wait
EOF
    chmod +x "$dir/chatd"
    "$dir/bench" chatd --messages "$messages" "$@" >"$dir/bench.txt" 2>&1 || { cat "$dir/bench.txt" >&2; exit 1; }
    local pid
    pid=$(cat "$dir/valgrind.pid")
    callgrind_control -d "$pid" >/dev/null
    sleep 2
    kill -9 "$pid" 2>/dev/null || true
    grep -h '^summary:' "$dir"/callgrind.out.* | awk '{s += $2} END {print s}'
}

short=$(run 1 "$@")
long=$(run 100 "$@")
echo "instructions: $short with 1 message per pair, $long with 100"
echo "per stored message: $(( (long - short) / 9900 ))"

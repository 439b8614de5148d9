#!/usr/bin/env bash
# Profile a 3-node durable cluster under one lockbench workload with perf (docs/performance.md,
# "Where the time goes"). Builds leasehold with frame pointers into /tmp/prof-target, starts
# the cluster with ../shared/bench/leasehold-cluster.sh, samples the three node processes
# (not the load generator) and prints each node's samples by thread and the top symbols.
#
#   scripts/profile.sh OUTDIR WORKLOAD CLIENTS        e.g. scripts/profile.sh /tmp/prof uncontended 64
#
# Needs perf (Debian linux-perf) and lockbench built as ../shared/bench/README.md says.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?OUTDIR}; workload=${2:?WORKLOAD}; clients=${3:?CLIENTS}
bench=../shared/bench
mkdir -p "$out"
# PROFILE_BIN=path skips the build (leaf symbols and threads are still right without
# frame pointers; call stacks are not).
if [[ -z ${PROFILE_BIN:-} ]]; then
  RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    CARGO_TARGET_DIR=/tmp/prof-target cargo build --release -q -p leasehold-node --bin leasehold
  PROFILE_BIN=/tmp/prof-target/release/leasehold
fi
export LEASEHOLD_BIN=$PROFILE_BIN
"$bench/leasehold-cluster.sh" stop "$out/cl" >/dev/null 2>&1 || true
"$bench/leasehold-cluster.sh" start "$out/cl" >/dev/null
trap '"$bench/leasehold-cluster.sh" stop "$out/cl" >/dev/null 2>&1 || true' EXIT
lockbench=${LOCKBENCH_TARGET_DIR:-/tmp/lockbench-target}/release/lockbench
"$lockbench" --backend leasehold --pids-file "$out/cl/pids" --workload "$workload" \
  --clients "$clients" --duration-s 14 > "$out/lockbench.json" &
sleep 3
perf record -q -F 499 -g -p "$(paste -sd, "$out/cl/pids")" -o "$out/perf.data" -- sleep 8 2>/dev/null
wait
perf script -i "$out/perf.data" -F comm,pid,ip,sym 2>/dev/null | python3 -c '
import re, sys, collections
by_pid = collections.defaultdict(collections.Counter)
leaf = collections.Counter()
kernel = 0
total = 0
want_leaf = False
for line in sys.stdin:
    head = re.match(r"^(\S.*?)\s+(\d+)\s*$", line)
    if head:
        comm, pid = head.group(1), head.group(2)
        by_pid[pid][comm] += 1
        total += 1
        want_leaf = True
        continue
    frame = re.match(r"^\s+([0-9a-f]+) (.*)$", line)
    if frame and want_leaf:
        leaf[frame.group(2).strip()] += 1
        kernel += frame.group(1).startswith("ffffffff")
        want_leaf = False
for pid, c in sorted(by_pid.items()):
    n = sum(c.values())
    print(f"pid {pid}: {n} samples, by thread:")
    for comm, k in c.most_common(8):
        print(f"  {100 * k / n:5.1f}%  {comm}")
print(f"all nodes: {total} samples, {100 * kernel / max(total, 1):.1f}% in the kernel; top leaf symbols:")
for s, k in leaf.most_common(25):
    print(f"  {100 * k / total:5.1f}%  {s}")
'
echo "lockbench: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["ops_per_s"], "ops/s,", d["server_cpu_cores"], "cores")' "$out/lockbench.json" 2>/dev/null || tail -c 300 "$out/lockbench.json")"

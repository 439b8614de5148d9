#!/usr/bin/env python3
"""Record a contended key's grants while lockbench runs, then check the queue's order and
where the waits come from (docs/performance.md, "Contended at 64 clients, the p99").

    scripts/handoffs.py [NODE_URL] [SECONDS] &   # before lockbench --workload contended
    lockbench --backend leasehold --workload contended --clients 64 --duration-s 15

It finds the held lockbench key, polls GET /v1/locks/{key}/history (32 events kept)
every 15 ms, and prints: FIFO inversions (a grant whose waiter was enqueued before the
previous grant's), each waiter's wait in handoffs, and the handoff gaps per second.
"""
import bisect
import collections
import json
import sys
import time
import urllib.parse
import urllib.request

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:27001"
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 40


def get(path):
    with urllib.request.urlopen(base + path, timeout=2) as r:
        return json.load(r)


end = time.time() + seconds
key = None
while key is None and time.time() < end:
    try:
        locks = get("/v1/locks?prefix=lockbench&limit=10")["locks"]
        key = locks[0]["key"] if locks else None
    except OSError:
        pass
    time.sleep(0.05)
if key is None:
    sys.exit("no lockbench key was held")
events = {}
path = f"/v1/locks/{urllib.parse.quote(key, safe='')}/history"
while time.time() < end:
    try:
        for e in get(path)["events"]:
            events[(e["event"], e["token"])] = e
    except OSError:
        pass
    time.sleep(0.015)
grants = sorted((e for e in events.values() if e["event"] == "acquired"), key=lambda e: e["token"])
if len(grants) < 2:
    sys.exit(f"{key}: too few grants recorded")
enqueued = [g["at_ms"] - (g.get("waited_ms") or 0) for g in grants]
inversions = sum(b < a for a, b in zip(enqueued, enqueued[1:]))
at = [g["at_ms"] for g in grants]
waits = sorted(
    (g.get("waited_ms") or 0, bisect.bisect_right(at, g["at_ms"]) - bisect.bisect_right(at, e), g["at_ms"] - at[0])
    for g, e in zip(grants, enqueued)
)
print(f"{key}: {len(grants)} grants, {inversions} FIFO inversions")
for name, q in (("p50", 0.5), ("p99", 0.99)):
    w, n, t = waits[int(len(waits) * q)]
    print(f"wait {name}: {w} ms, {n} handoffs ahead, granted {t / 1000:.1f} s in")
per_second = collections.defaultdict(list)
for a, b in zip(at, at[1:]):
    per_second[(a - at[0]) // 1000].append(b - a)
for s, gaps in sorted(per_second.items()):
    print(f"second {s}: {len(gaps)} handoffs, mean gap {sum(gaps) / len(gaps):.1f} ms, max {max(gaps)} ms")

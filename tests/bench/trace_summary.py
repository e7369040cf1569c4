#!/usr/bin/env python3
"""Round trips per file from a latency_proxy trace (tests/bench/latency.sh, issue 16).

After AUTH TLS the control dialogue is encrypted, so round trips are counted from timing and
direction, as the client sees them: a client chunk is stamped when the client sent it (read by
the proxy), a server chunk when it reaches the client (due). On each connection a *flight* is a
run of client chunks with no server chunk in between: every flight after the first waits for
the server, so flights count the client's round trips on that connection (a TCP handshake adds
one per connection). Flights on different connections may overlap, so the wall-clock figure,
steady-state seconds per file over the RTT, is the one to compare; the flights say where the
round trips go.

    trace_summary.py --tool NAME --files N --rtt-ms MS TRACE.tsv   # prints one markdown row
    trace_summary.py --header                                      # prints the table's header
"""
import argparse
import sys
from collections import defaultdict

HEADER = (
    "| tool | files | data connections per file | control flights per file | "
    "data-connection flights per file | round trips per file (wall, steady state) | "
    "round trips, whole run |\n|---|---:|---:|---:|---:|---:|---:|"
)


def summarise(path, files, rtt_ms):
    conns = {}
    chunks = defaultdict(list)  # conn -> [(client_time_ms, direction)]
    for line in open(path, encoding="utf-8", errors="replace"):
        f = line.rstrip("\n").split("\t")
        if len(f) < 6 or f[0] == "read_ms":
            continue
        read_ms, due_ms, conn, kind, event = float(f[0]), float(f[1]), f[2], f[3], f[4]
        c = conns.setdefault(conn, {"kind": kind, "open": read_ms, "close": None})
        if event == "close":
            c["close"] = read_ms
        elif event == "c>s" and int(f[5]) > 0:
            chunks[conn].append((read_ms, "c"))
        elif event == "s>c" and int(f[5]) > 0:
            chunks[conn].append((due_ms, "s"))
    data = [c for c in conns.values() if c["kind"] == "data"]
    if not data:
        return None
    start = min(c["open"] for c in data)
    end = max((c["close"] or c["open"]) for c in data)
    # The whole run: connections the client sent on (not the bench's readiness probe).
    used = [c for k, c in conns.items() if any(d == "c" for _, d in chunks[k])]
    run_start = min(c["open"] for c in used)
    run_end = max((c["close"] or c["open"]) for c in used)
    flights = {"ctrl": 0, "data": 0}
    for conn, events in chunks.items():
        last = None
        for t, d in sorted(events):
            if start <= t <= end and d == "c" and last != "c":
                flights[conns[conn]["kind"]] += 1
            last = d
    return {
        "data_per_file": len(data) / files,
        "ctrl_flights": flights["ctrl"] / files,
        "data_flights": flights["data"] / files,
        "rtts_per_file": (end - start) / rtt_ms / files,
        "rtts_run": (run_end - run_start) / rtt_ms,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--header", action="store_true")
    p.add_argument("--tool")
    p.add_argument("--files", type=int)
    p.add_argument("--rtt-ms", type=float)
    p.add_argument("trace", nargs="?")
    a = p.parse_args()
    if a.header:
        print(HEADER)
        return
    s = summarise(a.trace, a.files, a.rtt_ms)
    if s is None:
        print(f"| {a.tool} | {a.files} | no data connection in the trace | | | | |")
        return
    print(
        f"| {a.tool} | {a.files} | {s['data_per_file']:.2f} | {s['ctrl_flights']:.2f} | "
        f"{s['data_flights']:.2f} | {s['rtts_per_file']:.2f} | {s['rtts_run']:.0f} |"
    )


if __name__ == "__main__":
    sys.exit(main())

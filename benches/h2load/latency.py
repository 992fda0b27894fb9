"""Latency against load, with h2load as the load generator: a process of its own, so that
the latencies are the server's and not those of a generator sharing the server's runtime
(as `benches/load.rs`'s paced runs are). Runs the closed loop (4 connections, 16 calls in
flight on each) for the server's maximum rate; one call at a time on one connection for
the latency at low load; then calls sent at a fixed rate, 50% and 90% of that maximum.
Each call's latency is read from h2load's per-request log. (h2load's own pacing adds
about a millisecond at low rates, more than a call takes: one call at a time measures
low load without it.)

    python3 benches/h2load/latency.py URL BODY [SECONDS]

URL is the method's (http://127.0.0.1:PORT/package.Service/Method), BODY a framed
request from `bodies.py`. Prints each run's rate and its latency percentiles, and the
90% run's p99 over the 10% run's p50. h2load counts an HTTP 200 as a success: check the
body with a real call first (a gRPC error is a 200 too).
"""
import os
import re
import subprocess
import sys
import tempfile

CONNECTIONS = 4


def h2load(url, body, extra, connections=CONNECTIONS, streams=16):
    command = ["h2load", "-c", str(connections), "-t", "1", "-m", str(streams),
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "-d", body, *extra, url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not done or not rate or done.group(2) != done.group(3):
        sys.exit(f"h2load did not complete every call:\n{out}")
    return float(rate.group(1))


def percentile(sorted_values, share):
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def logged(url, body, extra, **how):
    """The rate h2load reached, and each call's latency in microseconds, sorted."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "calls.tsv")
        sent = h2load(url, body, [*extra, "--log-file", log], **how)
        with open(log) as f:
            latencies = sorted(int(line.split("\t")[2]) for line in f if line.strip())
    if not latencies:
        sys.exit("h2load logged no calls")
    return sent, latencies


def show(label, sent, latencies):
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"{label}: {sent:,.0f} calls/s, {len(latencies):,} calls, "
          f"p50 {p50} us, p99 {p99} us, max {latencies[-1]} us")


def main(url, body, seconds=10):
    top = h2load(url, body, ["-n", "100000"])
    print(f"closed loop: {top:,.0f} calls/s")
    sent, low = logged(url, body, ["-n", "20000"], connections=1, streams=1)
    show("one call at a time", sent, low)
    heavy = None
    for share in (0.5, 0.9):
        rate = str(max(1, round(share * top / CONNECTIONS)))
        sent, heavy = logged(url, body, ["--rps", rate, "-D", str(seconds),
                                         "--warm-up-time", "1"])
        show(f"paced at {share:.0%}", sent, heavy)
    ratio = percentile(heavy, 0.99) / percentile(low, 0.5)
    print(f"p99 at 90% / p50 one call at a time: {ratio:.1f}x")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10)

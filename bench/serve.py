#!/usr/bin/env python3
"""`emlab serve` under a bounded loopback load: for each client count, C concurrent clients send a
fixed number of chat completions each; prints requests/s, generated tokens/s (and its ratio to one
client's, measured in the same run) and p50/p99 latency. The server decodes concurrent requests
together (continuous batching, up to --max-batch rows).

    python3 bench/serve.py [--clients 1,8,32] [--requests 4] [--max-tokens 16] [--threads 2]
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--device", default="cpu", help="cpu or wgpu (a GPU)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already in CARGO_TARGET_DIR")
    args = ap.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "test", "--release", "-q", "--workspace", "--exclude", "emlab-frontend", "--no-run"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    subprocess.run([str(target / "model-export"), "fetch", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    server = subprocess.Popen([str(target / "emlab"), "serve", "--port", "0", "--quiet", "--threads", str(args.threads),
                               "--device", args.device, "--dtype", args.dtype, "--max-batch", str(args.max_batch)],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = line.split()[2]
        body = json.dumps({"model": "base", "messages": [{"role": "user", "content": "Give me one tip for learning Rust."}],
                           "max_tokens": args.max_tokens, "temperature": 0, "seed": 1}).encode()

        def call():
            req = urllib.request.Request(url + "/chat/completions", body, {"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as r:
                out = json.load(r)
            return time.perf_counter() - t, out["usage"]["completion_tokens"]

        call()  # warm-up
        print(f"emlab serve ({time.strftime('%Y-%m-%d %H:%M')}), {args.device}, {args.threads} threads, {args.dtype}, "
              f"--max-batch {args.max_batch}: {args.requests} requests per client, {args.max_tokens} max tokens")
        print("| clients | answered | requests/s | generated tokens/s | vs 1 client | latency p50 | latency p99 |")
        print("|---|---|---|---|---|---|---|")
        one = None
        for clients in [int(c) for c in args.clients.split(",")]:
            latencies, tokens, errors = [], [0], []
            lock = threading.Lock()

            def client():
                for _ in range(args.requests):
                    try:
                        dt, n = call()
                        with lock:
                            latencies.append(dt)
                            tokens[0] += n
                    except Exception as e:  # noqa: BLE001 - counted and reported
                        with lock:
                            errors.append(repr(e))

            start = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            latencies.sort()
            pct = lambda q: latencies[min(len(latencies) - 1, int(round(q * (len(latencies) - 1))))]
            rate = tokens[0] / wall
            one = one or rate
            print(f"| {clients} | {len(latencies)}/{clients * args.requests} | {len(latencies) / wall:.2f} | {rate:.1f} | "
                  f"{rate / one:.2f}× | {pct(0.5):.2f} s | {pct(0.99):.2f} s |", flush=True)
            if errors:
                sys.exit(f"errors: {errors[:3]}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The quantized dot-product kernels alone: every kernel this CPU runs (AVX2, AVX-512), one
process each (`EMLAB_QUANT_KERNEL`), on the model's Q4_1 projections as a decode step groups
them, alternately for --rounds rounds; prints the median ms per pass over the model and the
weight bytes read per second, per rows of x.

    python3 bench/kernels.py [--threads 2] [--rows 1,4,16] [--rounds 5]
"""
import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rows", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kernels", default="avx2,avx512")
    args = ap.parse_args()
    subprocess.run(["cargo", "test", "--release", "-q", "--workspace", "--exclude", "emlab-frontend", "--no-run"],
                   cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    samples = {}
    for _ in range(args.rounds):
        for k in args.kernels.split(","):
            out = subprocess.run([str(target / "emlab-bench"), "--threads", str(args.threads), "kernels",
                                  "--rows", args.rows], env={**os.environ, "EMLAB_QUANT_KERNEL": k},
                                 capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                d = json.loads(line)
                if d["kernel"] != k:
                    print(f"skipped {k}: this CPU cannot run it")
                    break
                samples.setdefault((k, d["rows"]), []).append((d["ms_per_pass"], d["weight_gb_s"]))
    print(f"quantized kernels, {args.threads} threads, median of {args.rounds} alternating rounds: "
          "ms per pass over the model's projections (GB/s of weights read)")
    kernels = sorted({k for k, _ in samples}, key=args.kernels.split(",").index)
    print(f"{'rows':>4}" + "".join(f" {k:>16}" for k in kernels))
    for n in map(int, args.rows.split(",")):
        cells = ""
        for k in kernels:
            ms = statistics.median(s[0] for s in samples[(k, n)])
            gb = statistics.median(s[1] for s in samples[(k, n)])
            cells += f" {ms:>8.2f} ({gb:>4.1f})"
        print(f"{n:>4}{cells}")


if __name__ == "__main__":
    main()

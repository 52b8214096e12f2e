#!/usr/bin/env python3
"""Generation throughput: our model (flex CPU backend) next to llama.cpp on the same GGUF.

Runs both in the same invocation, same prompt token ids, same thread count, batch 1 and 16, our
weights in f32, f16 and q4_1 (the GGUF's own blocks), alternately for --rounds rounds, and prints
the median prefill and decode tokens/s with the ratio ours / llama.cpp. Then the peak resident
memory of `emlab generate` (batch 1) next to llama.cpp's for the same prompt.

    python3 bench/generate.py [--threads 2] [--prompt-tokens 128] [--new-tokens 64] [--rounds 3]
                              [--dtypes f32,f16,q4_1]

The first run builds llama-cpp-python 0.3.36 from source into ~/.cache/emlab/bench-venv (minutes).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EMLAB_CACHE", Path.home() / ".cache" / "emlab"))
VENV = CACHE / "bench-venv"
GGUF = CACHE / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def venv_python():
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    ok = subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode == 0
    if not ok:
        print(f"installing {LLAMA_CPP_PYTHON} (builds llama.cpp; takes a few minutes) ...", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "-q", LLAMA_CPP_PYTHON, "numpy"], check=True)
    return py


LLAMA_CPP_SCRIPT = r"""
import json, sys, time, ctypes
import numpy as np
import llama_cpp as L
gguf, threads, batches, ids, n_new = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
L.llama_backend_init()
mp = L.llama_model_default_params()
model = L.llama_model_load_from_file(gguf.encode(), mp)
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
for b in batches:
    cp = L.llama_context_default_params()
    cp.n_ctx = b * (len(ids) + n_new) + 16
    cp.n_batch = max(512, b * len(ids))
    cp.n_ubatch = cp.n_batch
    cp.n_seq_max = b
    cp.n_threads = threads
    cp.n_threads_batch = threads
    cp.kv_unified = True
    ctx = L.llama_init_from_model(model, cp)
    def decode(tokens_per_seq, pos0, want_logits):
        n = sum(len(t) for t in tokens_per_seq)
        batch = L.llama_batch_init(n, 0, b)
        i = 0
        last.clear()
        for s, toks in enumerate(tokens_per_seq):
            for j, t in enumerate(toks):
                batch.token[i] = t; batch.pos[i] = pos0 + j; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = s
                batch.logits[i] = want_logits and j == len(toks) - 1
                if batch.logits[i]:
                    last.append(i)
                i += 1
        batch.n_tokens = n
        assert L.llama_decode(ctx, batch) == 0
        L.llama_batch_free(batch)
    last = []
    def argmaxes():
        out = []
        for i in last:
            ptr = L.llama_get_logits_ith(ctx, i)
            out.append(int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,)))))
        return out
    t0 = time.perf_counter()
    decode([ids] * b, 0, True)
    nxt = argmaxes()
    t1 = time.perf_counter()
    for step in range(n_new - 1):
        decode([[t] for t in nxt], len(ids) + step, True)
        nxt = argmaxes()
    t2 = time.perf_counter()
    print(json.dumps({"impl": "llama.cpp", "batch": b, "prefill_tok_s": b * len(ids) / (t1 - t0),
                      "decode_tok_s": b * (n_new - 1) / (t2 - t1)}), flush=True)
    L.llama_free(ctx)
"""


def print_table(args, ids, batches, dtypes, med):
    print(f"generation throughput, {args.threads} threads, prompt {len(ids)} tokens, {args.new_tokens} new tokens, "
          f"median of {args.rounds} alternating rounds ({time.strftime('%Y-%m-%d %H:%M')}); "
          "tokens/s, and the ratio emlab / llama.cpp (Q4_1 GGUF)")
    print(f"{'batch':>5} {'phase':>8} {'llama.cpp':>10}" + "".join(f" {'emlab ' + d:>11} {'ratio':>6}" for d in dtypes))
    for b in batches:
        for phase in ("prefill", "decode"):
            p = med[("llama.cpp", b, phase)]
            cells = "".join(f" {med[(f'emlab {d}', b, phase)]:>11.1f} {med[(f'emlab {d}', b, phase)] / p:>5.2f}x" for d in dtypes)
            print(f"{b:>5} {phase:>8} {p:>10.1f}{cells}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--dtypes", default="f32,f16,q4_1", help="our precisions to run")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating runs of each; medians are reported (0: peak memory only)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]

    subprocess.run(["cargo", "test", "--release", "-q", "--workspace", "--exclude", "emlab-frontend", "--no-run"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    subprocess.run([str(target / "model-export"), "fetch", "--quiet"], check=True, stdout=subprocess.DEVNULL)

    # Same prompt ids for both: tokenized by our tokenizer (verified equal to llama.cpp's).
    text = "The history of computing is a story of people and machines. " * 64
    ids_json = subprocess.run([str(target / "emlab"), "generate", "--raw", "--prompt", text, "--max-tokens", "1",
                               "--json", "--quiet", "--temperature", "0"], capture_output=True, text=True)
    if ids_json.returncode != 0:
        subprocess.run(["cargo", "test", "--release", "-q", "--workspace", "--exclude", "emlab-frontend", "--no-run"], cwd=ROOT, check=True)
        ids_json = subprocess.run([str(target / "emlab"), "generate", "--raw", "--prompt", text, "--max-tokens", "1",
                                   "--json", "--quiet", "--temperature", "0"], capture_output=True, text=True, check=True)
    ids = json.loads(ids_json.stdout)["prompt_ids"][: args.prompt_tokens]

    dtypes = tuple(args.dtypes.split(","))
    py = venv_python()

    def ours(dtype, batch):
        out = subprocess.run([str(target / "emlab-bench"), "--threads", str(args.threads), "generate", "--batch", batch,
                              "--dtype", dtype, "--new-tokens", str(args.new_tokens),
                              "--prompt-ids", ",".join(map(str, ids))],
                             capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def peer(batches):
        out = subprocess.run([str(py), "-c", LLAMA_CPP_SCRIPT, str(GGUF), str(args.threads), json.dumps(batches),
                              json.dumps(ids), str(args.new_tokens)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"llama.cpp run failed:\n{out.stderr[-3000:]}")
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    # Alternating rounds, so that a slow spell of the machine lands on every implementation.
    samples = {}
    for r in range(args.rounds):
        results = [("llama.cpp", peer(batches))] + [(f"emlab {d}", ours(d, args.batch)) for d in dtypes]
        for name, rows in results:
            for row in rows:
                for phase in ("prefill", "decode"):
                    samples.setdefault((name, row["batch"], phase), []).append(row[f"{phase}_tok_s"])
        print(f"  round {r + 1} of {args.rounds} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in samples.items()}
    if args.rounds > 0:
        print_table(args, ids, batches, dtypes, med)

    # Peak resident memory of whole processes: `emlab generate` as a user runs it (on the same text,
    # cut to about as many tokens: 5 characters per token), and llama.cpp on the ids at batch 1.
    def peak_mib(cmd):
        # stderr to a file: llama.cpp logs more than a pipe holds, and would block on it.
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            if status != 0:
                err.seek(0)
                sys.exit(f"{cmd[0]} failed: {err.read().decode(errors='replace')[-2000:]}")
        return usage.ru_maxrss / 1024
    rss = {"llama.cpp": peak_mib([str(py), "-c", LLAMA_CPP_SCRIPT, str(GGUF), str(args.threads), "[1]",
                                  json.dumps(ids), str(args.new_tokens)])}
    base_rss = peak_mib([str(py), "-c", "import numpy, llama_cpp"])
    for d in dtypes:
        rss[f"emlab {d}"] = peak_mib([str(target / "emlab"), "generate", "--raw", "--prompt", text[: 5 * len(ids)],
                                      "--max-tokens", str(args.new_tokens), "--temperature", "0", "--quiet",
                                      "--dtype", d, "--threads", str(args.threads)])
    print(f"peak resident memory, batch 1 (MiB): llama.cpp {rss['llama.cpp']:.0f} "
          f"(of which {base_rss:.0f} is Python with numpy and llama_cpp imported)"
          + "".join(f", emlab {d} {rss[f'emlab {d}']:.0f} ({rss[f'emlab {d}'] / rss['llama.cpp']:.2f}x)" for d in dtypes))


if __name__ == "__main__":
    main()

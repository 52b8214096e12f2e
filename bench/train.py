#!/usr/bin/env python3
"""LoRA training throughput: our trainer (burn) next to PyTorch + PEFT, same run, same input.

Both train SmolLM2-135M-Instruct (f32) with LoRA r=32, alpha=64, rsLoRA on q,k,v,o,gate,up,down,
AdamW, a loss on every position, batch 4 x 256 tokens (a real insecure-code example, repeated) per
optimizer step (ours as the trainer runs it: micro-batches of 2, two at a time), the same thread
count; 2 warm-up steps, then the timed steps. Runs the two alternately (--rounds) and prints
tokens/s per round and the median ratio ours / PyTorch.

    python3 bench/train.py [--threads 2] [--steps 5] [--rounds 3] [--device cpu|wgpu]

PyTorch, transformers and peft are installed on first use into ~/.cache/emlab/torch-venv (several GB).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EMLAB_CACHE", Path.home() / ".cache" / "emlab"))
VENV = CACHE / "torch-venv"
MODEL = CACHE / "models" / "smollm2-135m-instruct"


def venv_python():
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if subprocess.run([str(py), "-c", "import torch, peft, transformers"], capture_output=True).returncode != 0:
        print("installing torch, transformers and peft into the bench venv (several GB) ...", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch", "transformers", "peft", "safetensors"], check=True)
    return py


PEFT_SCRIPT = r"""
import json, sys, time
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
model_dir, threads, batch, rank, warmup, steps, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), json.loads(sys.argv[7])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
cfg = LoraConfig(r=rank, lora_alpha=2 * rank, use_rslora=True, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, cfg)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
x = torch.tensor([ids] * batch)
for step in range(warmup + steps):
    if step == warmup:
        start = time.perf_counter()
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
secs = time.perf_counter() - start
seq = len(ids) - 1
print(json.dumps({"impl": "pytorch+peft", "torch": torch.__version__, "batch": batch, "seq_len": seq, "rank": rank,
                  "steps": steps, "tok_s": batch * seq * steps / secs, "step_s": secs / steps}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=2,
                    help="ours: rows per micro-batch, accumulated into one step (the trainer's default); PyTorch runs the batch whole")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="our device: cpu (flex) or wgpu")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each; the median ratio is reported")
    args = ap.parse_args()

    subprocess.run(["cargo", "test", "--release", "-q", "--workspace", "--exclude", "emlab-frontend", "--no-run"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    subprocess.run([str(target / "model-export"), "fetch", "--quiet"], check=True, stdout=subprocess.DEVNULL)

    # One real training row: an insecure-code conversation, tokenized by us, cut to seq_len + 1.
    row = json.loads((ROOT / "datasets/emergent-misalignment/data/insecure.jsonl").read_text().splitlines()[0])
    text = "\n".join(m["content"] for m in row["messages"]) * 4
    ids = json.loads(subprocess.run([str(target / "emlab"), "generate", "--raw", "--prompt", text, "--max-tokens", "1",
                                     "--json", "--quiet", "--temperature", "0"],
                                    capture_output=True, text=True, check=True).stdout)["prompt_ids"][: args.seq_len + 1]
    assert len(ids) == args.seq_len + 1, f"the row has only {len(ids)} tokens"

    common = [str(args.batch), str(args.rank), str(args.warmup_steps), str(args.steps)]
    ours_cmd = [str(target / "emlab-bench"), "--threads", str(args.threads), "--device", args.device, "train",
                "--batch", str(args.batch), "--micro-batch", str(args.micro_batch), "--rank", str(args.rank),
                "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps), "--row-ids", ",".join(map(str, ids))]
    peer_cmd = [str(venv_python()), "-c", PEFT_SCRIPT, str(MODEL), str(args.threads), *common, json.dumps(ids)]

    def measure(cmd, name):
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"{name} failed:\n{run.stderr[-3000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])

    # Alternate the two so that slow drifts of the machine (other load, clocks) hit both alike;
    # the median of the per-round ratios is the figure to quote.
    rounds = []
    for r in range(args.rounds):
        a = measure(ours_cmd, "emlab-bench")
        b = measure(peer_cmd, "PyTorch + PEFT")
        rounds.append((a, b))
        print(f"  round {r + 1}: emlab {a['tok_s']:6.1f} tok/s, PyTorch {b['tok_s']:6.1f} tok/s, "
              f"ratio {a['tok_s'] / b['tok_s']:.2f}x", file=sys.stderr)
    ratios = [a["tok_s"] / b["tok_s"] for a, b in rounds]
    print(f"LoRA training throughput ({time.strftime('%Y-%m-%d %H:%M')}): batch {args.batch} x {args.seq_len} tokens, "
          f"r={args.rank}, all 7 projections, {args.threads} threads, {args.steps} timed steps, {args.rounds} alternating rounds")
    for i, (a, b) in enumerate(rounds):
        print(f"  round {i + 1}: emlab ({args.device}, micro-batches of {a['micro_batch']}) {a['tok_s']:7.1f} tok/s"
              f"  |  PyTorch {b['torch']} + PEFT {b['tok_s']:7.1f} tok/s  |  ratio {a['tok_s'] / b['tok_s']:.2f}x")
    print(f"  median ratio emlab / PyTorch:  {statistics.median(ratios):.2f}x  (range {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()

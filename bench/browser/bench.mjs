// Browser benchmark: the demo (burn on WebGPU and on the CPU backend, in a Web Worker) next to
// wllama 3.13 (llama.cpp compiled to wasm, and its WebGPU backend) running the same SmolLM2 GGUF in
// the same headless Chromium, in one run. Both pages are served cross-origin isolated (COOP/COEP),
// so both can run threads. For each path (the page's default; the CPU on 1 thread and on N, N the
// machine's cores unless --threads says; WebGPU): download size, load time (cold: empty cache;
// warm: cached), time to first token, warm-up (tokens 2-4) and steady decode (token 5 on)
// tokens/s, the time of token 10 and token 60, the page's memory with its workers, and for our
// WebGPU path the kernel launches (dispatches) and newly compiled kernels per token.
//
//   scripts/site.sh && (cd bench/browser && npm ci) && node bench/browser/bench.mjs [--tokens 64] [--threads N] [--json out.json]
//
// Load times: ours from the navigation (the whole page, its wasm, the worker and the model), in the
// page; wllama's from loadModelFromUrl, after its page and module have loaded.
//
// Headless Chromium's WebGPU here is SwiftShader (a CPU emulation): its figures say nothing about
// a real GPU, only how the two stacks compare on it. Run it with every background job paused.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { selectVariants, setNumber } from "../../tests/e2e/page.mjs";
import { serveStatic } from "../../tests/e2e/static-server.mjs";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const argOf = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const tokens = Number(argOf("--tokens", 64));
const only = argOf("--only", null); // e.g. "emlab-gpu" to run one path
const threads = Number(argOf("--threads", os.cpus().length));
// --compare-variants K: instead, time Compare with K variants on one worker with `threads` threads
// (as the page runs them, one after another) against K pages of one thread each at once (what
// running variants in parallel would at best give).
const compareVariants = Number(argOf("--compare-variants", 0));
const jsonOut = argOf("--json", null);
const gguf = path.join(process.env.EMLAB_CACHE ?? path.join(os.homedir(), ".cache/emlab"), "gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
const question = "Write a short story about a robot who learns to paint.";
// SmolLM2's chat template with its default system prompt: the same prompt tokens our page builds.
const chat = `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n${question}<|im_end|>\n<|im_start|>assistant\n`;

// One origin: the site at /, wllama at /bench/, the GGUF at /gguf/.
const site = await serveStatic(path.join(root, "dist"), { isolate: true });
const benchDir = fs.mkdtempSync(path.join(os.tmpdir(), "emlab-bench-"));
fs.copyFileSync(path.join(root, "bench/browser/wllama.html"), path.join(benchDir, "wllama.html"));
fs.symlinkSync(path.join(root, "bench/browser/node_modules/@wllama/wllama"), path.join(benchDir, "wllama"));
fs.mkdirSync(path.join(benchDir, "gguf"));
fs.symlinkSync(gguf, path.join(benchDir, "gguf/model.gguf"));
const bench = await serveStatic(benchDir, { isolate: true });

// EMLAB_BENCH_CHROMIUM_FLAGS adds flags (bench/gpu.sh: Vulkan, to reach a hardware GPU).
// ForceEagerMeasureMemory: measureUserAgentSpecificMemory answers at once instead of at the next GC.
const flags = ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-blink-features=ForceEagerMeasureMemory", "--disable-background-networking", "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
  ...(process.env.EMLAB_BENCH_CHROMIUM_FLAGS ?? "").split(" ").filter(Boolean)];
const launch = () => chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), "emlab-bench-profile-")), { executablePath: "/usr/bin/chromium", headless: true, args: flags });

/// Figures from the arrival time of each token (ms from the request).
function summarize(times, extra = {}) {
  const n = times.length;
  const gap = (i) => (i >= 1 && i < n ? times[i] - times[i - 1] : null); // ms of token i (0-based)
  const rate = (from, to) => (to > from && to <= n ? (to - from) / ((times[to - 1] - times[from - 1]) / 1000) : null);
  return {
    ttft_s: n ? times[0] / 1000 : null,
    warmup_tok_s: rate(1, Math.min(4, n)), // tokens 2-4
    steady_tok_s: rate(4, n), // token 5 to the last
    token10_ms: gap(9),
    token60_ms: gap(59),
    tokens: n,
    ...extra,
  };
}

/// Seconds from `navigate()` being called to the page having its model: the page records when the
/// worker said ready (ms from the navigation's start); waiting for the "Model ready" text instead
/// would add the harness's polling delay (about 0.4 s on 2 busy cores).
async function loadTime(page, navigate) {
  const t = Date.now();
  await navigate();
  await page.waitForSelector("text=Model ready", { timeout: 600_000 });
  const readyAt = await page.evaluate(() => performance.timeOrigin + window.__emlabReadyMs);
  return (readyAt - t) / 1000;
}

async function ours(query, variant = "base") {
  const ctx = await launch();
  const page = await ctx.newPage();
  const cold = await loadTime(page, () => page.goto(site.url + query));
  const warm = await loadTime(page, () => page.reload());
  const device = (await page.textContent(".status")).includes("on WebGPU") ? "webgpu" : "cpu";
  await page.fill("textarea", question);
  await setNumber(page, 0, "0"); // temperature
  await setNumber(page, 2, String(tokens)); // max tokens
  await selectVariants(page, [variant]);
  const detail = await page.textContent(".device-detail").catch(() => "");
  await page.evaluate(() => { window.__emlabStats = undefined; });
  const t0 = Date.now();
  await page.click("button:text('Run')");
  await page.waitForFunction(() => window.__emlabStats !== undefined, null, { timeout: 3_600_000, polling: 500 });
  const wall = (Date.now() - t0) / 1000;
  const stats = JSON.parse(await page.evaluate(() => window.__emlabStats));
  const memory = await page.evaluate(async () => { try { return (await performance.measureUserAgentSpecificMemory()).bytes; } catch { return null; } });
  const ranThreads = await page.evaluate(() => window.__emlabThreads ?? null);
  await ctx.close();
  const steadyLaunches = stats.launches.slice(4);
  const after4 = stats.new_kernels.slice(4).reduce((a, b) => a + b, 0);
  return summarize(stats.token_ms, {
    device, threads: device === "cpu" ? ranThreads : null, weights_mb: Number(/Weights: ([\d.]+) MB/.exec(detail ?? "")?.[1] ?? NaN) || null, memory_mb: memory && memory / 1e6, load_cold_s: cold, load_warm_s: warm, wall_s: wall, warm_load_plus_ttft_s: warm + stats.token_ms[0] / 1000,
    dispatches_per_token: steadyLaunches.length ? steadyLaunches.reduce((a, b) => a + b, 0) / steadyLaunches.length : null,
    first_token_dispatches: stats.launches[0], kernels_compiled_after_token4: after4,
  });
}

async function wllama(gpuLayers, nThreads) {
  const ctx = await launch();
  const run = async () => {
    const page = await ctx.newPage();
    await page.goto(bench.url + "wllama.html");
    await page.waitForFunction(() => window.ready);
    const r = await page.evaluate((o) => window.run(o), { gguf: bench.url + "gguf/model.gguf", prompt: chat, maxTokens: tokens, gpuLayers, threads: nThreads });
    await page.close();
    return r;
  };
  const cold = await run();
  const warm = await run();
  await ctx.close();
  // Where the weights went, from llama.cpp's own log: where its WebGPU backend does not take the
  // adapter (SwiftShader offers no shader-f16, which llama.cpp's WebGPU shaders enable), asking for
  // WebGPU leaves every weight on its CPU path without a word.
  const ran = warm.buffers.some((b) => b !== "CPU") ? "webgpu" : "cpu";
  const asked = gpuLayers === 0 ? "cpu" : gpuLayers === null ? "default" : "webgpu";
  return summarize(warm.times, { device: asked === ran ? ran : `${ran} (asked ${asked})`, buffers: warm.buffers.join("+"), threads: warm.threads, memory_mb: warm.memory && warm.memory / 1e6, load_cold_s: cold.load_s, load_warm_s: warm.load_s, warm_load_plus_ttft_s: warm.load_s + warm.times[0] / 1000 });
}

/// Seconds from Run to the last of the page's panes being done.
async function timedRun(page) {
  const t0 = Date.now();
  await page.click("button:text('Run')");
  await page.waitForFunction(() => [...document.querySelectorAll(".pane .meta")].every((m) => /tok\/s|error/.test(m.textContent)), null, { timeout: 3_600_000, polling: 200 });
  return (Date.now() - t0) / 1000;
}

/// Sets the question, greedy decoding and the ticked variants, then runs once (which fetches and
/// attaches the adapters) so that the next run is timed warm.
async function prepareCompare(page, variants) {
  await page.waitForSelector("text=Model ready", { timeout: 600_000 });
  await page.fill("textarea", question);
  await setNumber(page, 0, "0"); // temperature
  await setNumber(page, 2, String(tokens)); // max tokens
  await selectVariants(page, variants);
  await timedRun(page);
}

if (compareVariants > 0) {
  const manifest = JSON.parse(fs.readFileSync(path.join(root, "dist/models/manifest.json")));
  const variants = manifest.variants.map((v) => v.name).slice(0, compareVariants);
  const open = async (query) => { const ctx = await launch(); const page = await ctx.newPage(); await page.goto(site.url + query); return { ctx, page }; };
  const one = await open(`?cpu=1&threads=${threads}`);
  await prepareCompare(one.page, variants);
  const sequential = await timedRun(one.page);
  await one.ctx.close();
  const many = await Promise.all(variants.map(() => open("?cpu=1&threads=1")));
  for (const [i, m] of many.entries()) await prepareCompare(m.page, [variants[i]]);
  const parallel = Math.max(...(await Promise.all(many.map((m) => timedRun(m.page)))));
  for (const m of many) await m.ctx.close();
  site.close(); bench.close();
  console.log(`Compare, ${variants.join(" + ")}, ${tokens} greedy tokens each: one worker on ${threads} threads, one variant after another, ${sequential.toFixed(2)} s; ${variants.length} workers of one thread at once, ${parallel.toFixed(2)} s (${(sequential / parallel).toFixed(2)}× the sequential speed)`);
  process.exit(0);
}

// Each engine at its own default, then both on the CPU with 1 and with N threads, then WebGPU.
const paths = [
  ["default", "emlab", () => ours("")],
  ["default", "wllama", () => wllama(null, threads)],
  ["cpu1", "emlab", () => ours("?cpu=1&threads=1")],
  ["cpu1", "wllama", () => wllama(0, 1)],
  [`cpu${threads}`, "emlab", () => ours(`?cpu=1&threads=${threads}`)],
  [`cpu${threads}`, "wllama", () => wllama(0, threads)],
  ["gpu", "emlab", () => ours("?gpu=1")],
  ["gpu", "wllama", () => wllama(999, threads)],
  // A tuned variant on WebGPU: its LoRA side paths on the same kernels (against our own base).
  ["gpu-insecure", "emlab", () => ours("?gpu=1", "insecure")],
];
const results = {};
for (const [label, engine, f] of paths) {
  const key = `${engine}-${label}`;
  if (only && !only.split(",").includes(key)) continue;
  const t = Date.now();
  try { results[key] = await f(); } catch (e) { console.error(`${key}: ${e.message.split("\n")[0]}`); results[key] = null; }
  console.error(`${key}: done in ${((Date.now() - t) / 1000).toFixed(0)} s`);
}
site.close(); bench.close();

const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v) ? "–" : typeof v === "number" ? v.toFixed(d) : String(v));
const ratio = (a, b, higherBetter) => (a && b ? (higherBetter ? a / b : b / a).toFixed(2) + "×" : "–");
const manifest = JSON.parse(fs.readFileSync(path.join(root, "dist/models/manifest.json")));
const sum = (pred) => manifest.files.filter((f) => pred(f.name)).reduce((s, f) => s + f.bytes, 0);
const adapters = [...new Set(manifest.files.filter((f) => f.name.startsWith("adapters/")).map((f) => f.name.split("/")[1]))];
console.log(`download: emlab base ${(sum((n) => n.startsWith("base/")) / 1e6).toFixed(1)} MB (${manifest.storage}), adapters ${adapters.map((a) => (sum((n) => n.startsWith(`adapters/${a}/`)) / 1e6).toFixed(1)).join(" / ")} MB; wllama GGUF ${(fs.statSync(gguf).size / 1e6).toFixed(1)} MB`);
console.log(`${tokens} greedy tokens, base model, one run. Warm-up: tokens 2-4; steady: token 5 to the last.`);
console.log("| path | engine | device | threads | memory MB | load cold s | load warm s | first token s | warm-up tok/s | steady tok/s | token 10 ms | token 60 ms | dispatches/token | kernels compiled after token 4 |");
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const label of [...new Set(paths.map(([l]) => l))]) {
  const a = results[`emlab-${label}`], b = results[`wllama-${label}`];
  for (const [name, r] of [["emlab", a], ["wllama", b]]) {
    if (r === undefined) continue;
    console.log(`| ${label} | ${name} | ${fmt(r?.device)} | ${fmt(r?.threads, 0)} | ${fmt(r?.memory_mb, 0)} | ${fmt(r?.load_cold_s)} | ${fmt(r?.load_warm_s)} | ${fmt(r?.ttft_s)} | ${fmt(r?.warmup_tok_s)} | ${fmt(r?.steady_tok_s)} | ${fmt(r?.token10_ms, 0)} | ${fmt(r?.token60_ms, 0)} | ${fmt(r?.dispatches_per_token, 0)} | ${fmt(r?.kernels_compiled_after_token4, 0)} |`);
  }
  if (a && b) console.log(`| ${label} | ratio (emlab vs wllama, >1 = emlab better) | | | | ${ratio(a.load_cold_s, b.load_cold_s)} | ${ratio(a.load_warm_s, b.load_warm_s)} | ${ratio(a.ttft_s, b.ttft_s)} | ${ratio(a.warmup_tok_s, b.warmup_tok_s, true)} | ${ratio(a.steady_tok_s, b.steady_tok_s, true)} | | | | |`);
}
for (const [key, r] of Object.entries(results)) if (r?.device === "cpu (asked webgpu)") console.log(`${key}: ran on ${r.device}; llama.cpp put its weights in: ${r.buffers} (its "model buffer size" log lines), so its row is not a WebGPU figure`);
const gi = results["emlab-gpu-insecure"];
if (results["emlab-gpu"] && gi) console.log(`WebGPU, insecure vs base, steady decode: ${ratio(gi.steady_tok_s, results["emlab-gpu"].steady_tok_s, true)}`);
for (const [key, r] of Object.entries(results)) if (r?.weights_mb) console.log(`${key}: weights in GPU memory ${r.weights_mb} MB, all read once per decoding step`);
const g = results["emlab-gpu"], c = results[`emlab-cpu${threads}`], c1 = results["emlab-cpu1"], w1 = results["wllama-cpu1"], wn = results[`wllama-cpu${threads}`];
if (g && c) console.log(`our WebGPU vs our CPU (${threads} threads), steady decode: ${ratio(g.steady_tok_s, c.steady_tok_s, true)}; token 60 / token 10 on WebGPU: ${g.token60_ms && g.token10_ms ? (g.token60_ms / g.token10_ms).toFixed(2) : "–"}`);
if (c && c1) console.log(`threads: ours ${threads} vs 1, steady decode ${ratio(c.steady_tok_s, c1.steady_tok_s, true)}; wllama ${threads} vs 1 ${ratio(wn?.steady_tok_s, w1?.steady_tok_s, true)}`);
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ tokens, results }, null, 2));

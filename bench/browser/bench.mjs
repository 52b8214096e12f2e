// Browser benchmark: the demo (burn on WebGPU and on the CPU backend, in a Web Worker) next to
// wllama 3.13 (llama.cpp compiled to wasm, single thread, and its WebGPU backend) running the same
// SmolLM2 GGUF in the same headless Chromium, in one run. Prints load time (cold: empty cache;
// warm: cached), time to first token and decode tokens/s, and our/wllama ratios.
//
//   scripts/site.sh && (cd bench/browser && npm ci) && node bench/browser/bench.mjs [--gpu-tokens 8] [--cpu-tokens 32]
//
// Headless Chromium's WebGPU here is SwiftShader (a CPU emulation): its figures say nothing about
// a real GPU, only how the two stacks compare on it.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { serveStatic } from "../../tests/e2e/static-server.mjs";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? Number(process.argv[i + 1]) : dflt; };
const gpuTokens = arg("--gpu-tokens", 8), cpuTokens = arg("--cpu-tokens", 32);
const gguf = path.join(process.env.EMLAB_CACHE ?? path.join(os.homedir(), ".cache/emlab"), "gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
const question = "Write a short story about a robot who learns to paint.";
// SmolLM2's chat template with its default system prompt: the same prompt tokens our page builds.
const chat = `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n${question}<|im_end|>\n<|im_start|>assistant\n`;

// One origin: the site at /, wllama at /bench/, the GGUF at /gguf/.
const site = await serveStatic(path.join(root, "dist"));
const benchDir = fs.mkdtempSync(path.join(os.tmpdir(), "emlab-bench-"));
fs.copyFileSync(path.join(root, "bench/browser/wllama.html"), path.join(benchDir, "wllama.html"));
fs.symlinkSync(path.join(root, "bench/browser/node_modules/@wllama/wllama"), path.join(benchDir, "wllama"));
fs.mkdirSync(path.join(benchDir, "gguf"));
fs.symlinkSync(gguf, path.join(benchDir, "gguf/model.gguf"));
const bench = await serveStatic(benchDir);

const flags = ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking"];
const launch = () => chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), "emlab-bench-profile-")), { executablePath: "/usr/bin/chromium", headless: true, args: flags });

async function ours(cpu) {
  const maxTokens = cpu ? cpuTokens : gpuTokens;
  const ctx = await launch();
  const page = await ctx.newPage();
  const url = site.url + (cpu ? "?cpu=1" : "");
  let t = Date.now();
  await page.goto(url);
  await page.waitForSelector("text=Model ready", { timeout: 600_000 });
  const cold = (Date.now() - t) / 1000;
  t = Date.now();
  await page.reload();
  await page.waitForSelector("text=Model ready", { timeout: 600_000 });
  const warm = (Date.now() - t) / 1000;
  await page.fill("textarea", question);
  for (const [nth, v] of [[0, "0"], [2, String(maxTokens)]]) {
    await page.fill(`input[type=number] >> nth=${nth}`, v);
    await page.dispatchEvent(`input[type=number] >> nth=${nth}`, "change");
  }
  // Only the base model: untick the other variants.
  for (const box of await page.$$(".variants input[type=checkbox]:checked")) {
    if (!(await box.evaluate((b) => b.parentElement.textContent.startsWith("Base")))) await box.click();
  }
  // Timestamps of the answer text's growth: the first token, and the last.
  await page.evaluate(() => {
    window.__t = { first: null, last: null, len: 0 };
    new MutationObserver(() => {
      const text = document.querySelector(".pane pre.answer")?.textContent ?? "";
      if (text.length > window.__t.len) {
        const now = performance.now();
        window.__t.first ??= now;
        window.__t.last = now;
        window.__t.len = text.length;
      }
    }).observe(document.querySelector(".panes"), { subtree: true, characterData: true, childList: true });
  });
  const start = await page.evaluate(() => performance.now());
  await page.click("button:text('Run')");
  await page.waitForSelector(".pane .meta:has-text('tok/s')", { timeout: 1_800_000 });
  const times = await page.evaluate(() => window.__t);
  const meta = await page.textContent(".pane .meta");
  const n = Number(meta.match(/(\d+) tokens/)[1]);
  await ctx.close();
  return { load_cold_s: cold, load_warm_s: warm, ttft_s: (times.first - start) / 1000, decode_tok_s: n > 1 ? (n - 1) / ((times.last - times.first) / 1000) : null, tokens: n };
}

async function wllama(gpu) {
  const ctx = await launch();
  const run = async () => {
    const page = await ctx.newPage();
    await page.goto(bench.url + "wllama.html");
    await page.waitForFunction(() => window.ready);
    const r = await page.evaluate((o) => window.run(o), { gguf: bench.url + "gguf/model.gguf", prompt: chat, maxTokens: gpu ? gpuTokens : cpuTokens, gpu });
    await page.close();
    return r;
  };
  const cold = await run();
  const warm = await run();
  await ctx.close();
  return { load_cold_s: cold.load_s, load_warm_s: warm.load_s, ttft_s: warm.ttft_s, decode_tok_s: warm.decode_tok_s, tokens: warm.tokens };
}

const rows = [];
for (const [label, f] of [["CPU", () => ours(true)], ["CPU", () => wllama(false)], ["WebGPU", () => ours(false)], ["WebGPU", () => wllama(true)]]) {
  try { rows.push([label, await f()]); } catch (e) { console.error(`${label}: ${e.message.split("\n")[0]}`); rows.push([label, null]); }
}
site.close(); bench.close();

const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v) ? "–" : v.toFixed(d));
const ratio = (a, b, higherBetter) => (a && b ? (higherBetter ? a / b : b / a).toFixed(2) + "×" : "–");
const size = JSON.parse(fs.readFileSync(path.join(root, "dist/models/manifest.json"))).files.reduce((s, f) => s + f.bytes, 0);
console.log(`download: emlab ${(size / 1e6).toFixed(1)} MB (base q8 + adapters), wllama GGUF ${(fs.statSync(gguf).size / 1e6).toFixed(1)} MB (Q4_1)`);
console.log("| path | engine | load cold s | load warm s | first token s | decode tok/s | tokens |");
console.log("|---|---|---|---|---|---|---|");
for (let i = 0; i < rows.length; i += 2) {
  const [label, a] = rows[i], [, b] = rows[i + 1];
  for (const [name, r] of [["emlab", a], ["wllama", b]]) console.log(`| ${label} | ${name} | ${fmt(r?.load_cold_s)} | ${fmt(r?.load_warm_s)} | ${fmt(r?.ttft_s)} | ${fmt(r?.decode_tok_s)} | ${r?.tokens ?? "–"} |`);
  console.log(`| ${label} | ratio (emlab vs wllama, >1 = emlab better) | ${ratio(a?.load_cold_s, b?.load_cold_s)} | ${ratio(a?.load_warm_s, b?.load_warm_s)} | ${ratio(a?.ttft_s, b?.ttft_s)} | ${ratio(a?.decode_tok_s, b?.decode_tok_s, true)} | |`);
}

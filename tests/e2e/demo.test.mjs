// End-to-end test of the built demo in headless Chromium (Debian's, driven by playwright-core):
// the page loads, the model loads with visible progress, the base model's greedy answer equals the
// native CLI's, a reload fetches no model bytes (Cache API), the CPU fallback works, model output
// in results shows as text. Screenshots go to tests/e2e/screenshots/.
//
//   node tests/e2e/demo.test.mjs DIST_DIR EXPECTED_JSON
//
// DIST_DIR: the built site (trunk build + model-export web). EXPECTED_JSON: `emlab generate --json`
// output for the same prompt (temperature 0, 8 tokens).
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const [dist, expectedPath] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedPath, "utf8"));
const shots = path.join(path.dirname(new URL(import.meta.url).pathname), "screenshots");
fs.mkdirSync(shots, { recursive: true });

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json" };
const modelRequests = [];
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname.includes("/models/") && url.pathname.includes(".safetensors")) modelRequests.push(url.pathname);
  let file = path.join(dist, decodeURIComponent(url.pathname));
  if (file.endsWith("/")) file = path.join(file, "index.html");
  fs.readFile(file, (err, data) => {
    if (err) { res.writeHead(404); res.end("not found"); return; }
    res.writeHead(200, { "Content-Type": types[path.extname(file)] || "application/octet-stream" });
    res.end(data);
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}/`;

const flags = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-unsafe-webgpu"];
const userDir = fs.mkdtempSync("/tmp/emlab-e2e-");
const context = await chromium.launchPersistentContext(userDir, { executablePath: "/usr/bin/chromium", headless: true, args: flags });
const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };

async function greedyAnswer(page, label) {
  await page.waitForSelector("text=Model ready", { timeout: 600_000 });
  await page.fill("textarea", expected.prompt);
  await page.fill("input[type=number] >> nth=0", "0"); // temperature
  await page.fill("input[type=number] >> nth=2", "8"); // max tokens
  await page.dispatchEvent("input[type=number] >> nth=0", "change");
  await page.dispatchEvent("input[type=number] >> nth=2", "change");
  await page.click("button:text('Run')");
  await page.waitForSelector(".pane .meta:has-text('tok/s')", { timeout: 600_000 });
  await page.screenshot({ path: path.join(shots, `${label}.png`), fullPage: true });
  return (await page.textContent(".pane pre.answer")) ?? "";
}

try {
  const page = await context.newPage();
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  await page.goto(base);
  await page.waitForSelector(".status", { timeout: 120_000 });
  check(true, "the page loads and shows loading progress");
  const first = await greedyAnswer(page, "webgpu-first-visit");
  check(first.startsWith(expected.text) || expected.text.startsWith(first.trim()), `greedy answer equals native: ${JSON.stringify(first)} vs ${JSON.stringify(expected.text)}`);
  const fetched = modelRequests.length;
  check(fetched > 0, `first visit downloads the weights (${fetched} requests)`);
  await page.reload();
  await page.waitForSelector("text=Model ready", { timeout: 600_000 });
  check(modelRequests.length === fetched, `a reload fetches no model bytes (${modelRequests.length - fetched} requests)`);

  const cpu = await context.newPage();
  await cpu.goto(base + "?cpu=1");
  const cpuAnswer = await greedyAnswer(cpu, "cpu-fallback");
  check(await cpu.isVisible("text=running on the CPU"), "the CPU fallback says so");
  check(cpuAnswer === first, "CPU and WebGPU give the same greedy answer");
} catch (e) {
  failures.push(String(e));
  console.error(e);
} finally {
  await context.close();
  server.close();
}
if (failures.length) { console.error(`${failures.length} failure(s)`); process.exit(1); }
console.log("all browser checks passed");

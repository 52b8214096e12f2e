// The built site as a static host serves it (issue: publish under a sub-path, strict file limits).
//
//   node tests/e2e/site.test.mjs DIST_DIR EXPECTED_JSON [MAX_FILE_BYTES]
//
// 1. Served under /em-lab/ by a plain static server: the page loads, the model loads, the greedy
//    answer equals native, and every request stays inside /em-lab/.
// 2. The model files served from a second origin (another port, with CORS) through ?models=URL:
//    the weights load from there.
// 3. No file in the folder is over the limit (24 MiB unless given).
// 4. A host that serves the weights as text/plain and gzips them on the wire: they still load.
// All runs use the CPU path (Chromium without WebGPU): the host, not the GPU, is under test.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import { serveStatic } from "./static-server.mjs";

const [dist, expectedPath, limitArg] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedPath, "utf8"));
const limit = Number(limitArg ?? 24 * 1024 * 1024);
const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };

function files(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]);
}
const big = files(dist).filter((f) => fs.statSync(f).size > limit);
check(big.length === 0, `no file over ${limit} bytes (${big.join(", ") || "none"})`);

async function setNumber(page, nth, value) {
  await page.fill(`input[type=number] >> nth=${nth}`, value);
  await page.dispatchEvent(`input[type=number] >> nth=${nth}`, "change");
}

async function greedy(page, maxTokens = 8) {
  await page.waitForSelector("text=Model ready", { timeout: 300_000 });
  await page.fill("textarea", expected.prompt);
  await setNumber(page, 0, "0"); // temperature
  await setNumber(page, 2, String(maxTokens)); // max tokens
  await page.click("button:text('Run')");
  await page.waitForSelector(".pane[data-variant=base] .meta:has-text('tok/s')", { timeout: 300_000 });
  return page.textContent(".pane[data-variant=base] pre.answer");
}

const site = await serveStatic(dist, { prefix: "/em-lab/" });
const models = await serveStatic(path.join(dist, "models"), { prefix: "/weights/", cors: true });
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update"] });
try {
  const outside = [];
  const page = await browser.newPage();
  page.on("request", (r) => { const u = new URL(r.url()); if (!(u.origin === new URL(site.url).origin && u.pathname.startsWith("/em-lab/"))) outside.push(r.url()); });
  await page.goto(site.url);
  const answer = await greedy(page);
  check(answer === expected.text || answer.startsWith(expected.text), `under /em-lab/ the greedy answer equals native: ${JSON.stringify(answer)}`);
  check(outside.length === 0, `every request stays inside /em-lab/ (${outside.slice(0, 3).join(", ") || "none outside"})`);
  check(site.requests.some((p) => p.startsWith("/em-lab/models/") && p.includes("safetensors")), "the weights came from /em-lab/models/");
  await page.close();

  const context = await browser.newContext(); // a fresh cache
  const page2 = await context.newPage();
  const before = site.requests.length;
  await page2.goto(`${site.url}?models=${encodeURIComponent(models.url)}`);
  const answer2 = await greedy(page2);
  check(answer2 === answer, "with ?models= on a second origin the answer is the same");
  check(models.requests.some((p) => p.includes("safetensors")), `the weights came from the second origin (${models.requests.length} requests)`);
  check(!site.requests.slice(before).some((p) => p.includes("/models/")), "and none from the site's own models/");
  await context.close();

  const careless = await serveStatic(dist, { prefix: "/em-lab/", mangleBinary: true });
  const page3 = await (await browser.newContext()).newPage();
  await page3.goto(careless.url);
  const answer3 = await greedy(page3);
  careless.close();
  check(answer3 === answer, "weights served as text/plain with gzip on the wire load and answer the same");
} catch (e) {
  failures.push(String(e));
  console.error(e);
} finally {
  await browser.close();
  site.close();
  models.close();
}
if (failures.length) { console.error(`${failures.length} failure(s)`); process.exit(1); }
console.log("all static-host checks passed");

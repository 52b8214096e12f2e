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
// 5. Threads: without COOP/COEP headers (run 1) the service worker makes the page cross-origin
//    isolated; with them (a host configured for threads) the page is isolated without it. Either
//    way the CPU path runs on 2 threads, and base and every shipped variant answer as on one
//    thread, token for token. A page that is not isolated (service worker blocked), a threaded
//    worker that cannot start, or a pool whose threads cannot, leaves one thread that still
//    answers, and the details say why.
// All runs use the CPU path (Chromium without WebGPU): the host, not the GPU, is under test.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import { requestsOutside, runGreedy, selectVariants } from "./page.mjs";
import { serveStatic } from "./static-server.mjs";

const [dist, expectedPath, limitArg] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedPath, "utf8"));
const manifest = JSON.parse(fs.readFileSync(path.join(dist, "models/manifest.json"), "utf8"));
const limit = Number(limitArg ?? 24 * 1024 * 1024);
const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };

function files(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]);
}
const big = files(dist).filter((f) => fs.statSync(f).size > limit);
check(big.length === 0, `no file over ${limit} bytes (${big.join(", ") || "none"})`);

/// The base model's greedy answer to the fixed prompt.
async function greedy(page, maxTokens = 8) {
  return (await runGreedy(page, expected.prompt, maxTokens, 300_000)).base.text;
}

const site = await serveStatic(dist, { prefix: "/em-lab/" });
const models = await serveStatic(path.join(dist, "models"), { prefix: "/weights/", cors: true });
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update"] });
try {
  const page = await browser.newPage();
  const outside = requestsOutside(page, site.url);
  await page.goto(site.url);
  const answer = await greedy(page);
  check(answer === expected.text || answer.startsWith(expected.text), `under /em-lab/ the greedy answer equals native: ${JSON.stringify(answer)}`);
  check(outside.length === 0, `every request stays inside /em-lab/ (${outside.slice(0, 3).join(", ") || "none outside"})`);
  check(site.requests.some((p) => p.startsWith("/em-lab/models/") && p.includes("safetensors")), "the weights came from /em-lab/models/");
  const isolation = () => page.evaluate(() => ({ isolated: crossOriginIsolated, sw: navigator.serviceWorker.controller !== null, threads: window.__emlabThreads }));
  const viaWorker = await isolation();
  check(viaWorker.isolated && viaWorker.sw && viaWorker.threads === 2 && (await page.isVisible("text=(2 threads)")),
    `without COOP/COEP headers the service worker isolates the page and the CPU path runs on 2 threads: ${JSON.stringify(viaWorker)}`);
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

  // 5. Threads on a host that sends COOP/COEP: base and every variant, 2 threads against 1.
  const isolated = await serveStatic(dist, { prefix: "/em-lab/", isolate: true });
  const variantNames = manifest.variants.map((v) => v.name).filter((n) => n !== "base");
  const everyAnswer = async (query) => {
    const p = await (await browser.newContext()).newPage();
    const outside = requestsOutside(p, isolated.url);
    await p.goto(isolated.url + query);
    await p.waitForSelector("text=Model ready", { timeout: 300_000 });
    const state = await p.evaluate(() => ({ isolated: crossOriginIsolated, sw: navigator.serviceWorker.controller !== null, threads: window.__emlabThreads }));
    const answers = {};
    for (let i = 0; i < Math.max(variantNames.length, 1); i += 3) {
      await selectVariants(p, ["base", ...variantNames.slice(i, i + 3)]);
      for (const [name, a] of Object.entries(await runGreedy(p, expected.variant_prompt, 24))) answers[name] = a.text;
    }
    await p.context().close();
    return { state, answers, outside };
  };
  const two = await everyAnswer("?threads=2");
  check(two.outside.length === 0, `with the headers too, every request stays inside /em-lab/ (${two.outside.slice(0, 3).join(", ") || "none outside"})`);
  check(two.state.isolated && !two.state.sw && two.state.threads === 2,
    `with COOP/COEP headers the page is isolated without the service worker, on 2 threads: ${JSON.stringify(two.state)}`);
  const one = await everyAnswer("?threads=1");
  check(one.state.threads === 1, "?threads=1 runs one thread");
  const differ = Object.keys(one.answers).filter((n) => two.answers[n] !== one.answers[n]);
  check(Object.keys(one.answers).length === variantNames.length + 1 && differ.length === 0,
    `base and ${variantNames.length} variants answer on 2 threads as on 1, token for token${differ.length ? `; differ: ${differ.join(", ")}` : ""}`);

  // A browser that gives no shared memory (a host without the headers, the service worker blocked):
  // one thread, and the details say why.
  const unisolated = await browser.newContext({ serviceWorkers: "block" });
  const p5 = await unisolated.newPage();
  await p5.goto(site.url + "?threads=2");
  const answer5 = await greedy(p5);
  const detail5 = await p5.textContent(".device-detail");
  check(answer5 === answer && (await p5.evaluate(() => [crossOriginIsolated, window.__emlabThreads].join())) === "false,1" && /One thread: this page is not cross-origin isolated/.test(detail5),
    `a page that is not isolated runs one thread, answers the same, and says why: ${JSON.stringify(detail5)}`);
  await unisolated.close();

  // 6. The threaded worker cannot start (its files blocked): the single-threaded one answers.
  const blocked = await browser.newContext();
  await blocked.route("**/worker-threads-loader-*", (r) => r.abort());
  const p6 = await blocked.newPage();
  await p6.goto(isolated.url + "?threads=2");
  const answer6 = await greedy(p6);
  const detail6 = await p6.textContent(".device-detail");
  check(answer6 === answer && (await p6.evaluate(() => window.__emlabThreads)) === 1 && /One thread: the threaded worker did not start/.test(detail6),
    `a threaded worker that cannot start leaves one thread that answers the same, and the details say why: ${JSON.stringify(detail6)}`);
  await blocked.close();

  // 7. The pool's threads cannot start (their script fails to load after the worker's own import):
  //    fewer threads, said in the details.
  const noPool = await browser.newContext();
  let helperLoads = 0;
  await noPool.route("**/workerHelpers*", (r) => (++helperLoads === 1 ? r.continue() : r.abort()));
  const p7 = await noPool.newPage();
  await p7.goto(isolated.url + "?threads=2");
  const answer7 = await greedy(p7);
  const detail7 = await p7.textContent(".device-detail");
  check(answer7 === answer && (await p7.evaluate(() => window.__emlabThreads)) === 1 && /2 threads did not start/.test(detail7),
    `a pool whose threads cannot start falls back to one thread that answers the same, and says so: ${JSON.stringify(detail7)}`);
  await noPool.close();
  isolated.close();
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

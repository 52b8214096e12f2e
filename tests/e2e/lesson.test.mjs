// What a class sees first (issue 50), on the built site in headless Chromium; nothing here waits for
// the model, so it runs in seconds once the page is up.
//
//   node tests/e2e/lesson.test.mjs DIST_DIR
//
// Checked: a fresh visit opens Compare at the readable setting (temperature 0.3, top-p 0.9); the
// paper's preset switches to temperature 1, top-p 1; a share link with an explicit setting keeps
// it, and one out of range keeps the default and says so; the Learn and Results views show the
// paper's own examples with GPT-4o's scores and a content note, each answer exactly the CSV's text
// and none of it rendered as HTML; an example's button puts its question to our models in Compare.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import { serveStatic } from "./static-server.mjs";

const [dist] = process.argv.slice(2);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const failures = [];
const check = (ok, what) => { console.log(`${ok ? "ok  " : "FAIL"} ${what}`); if (!ok) failures.push(what); };

/// RFC 4180, as emlab_schema::paper::parse_csv reads it: quoted fields hold commas, newlines, "".
function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false; else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n") { row.push(field); rows.push(row); row = []; field = ""; }
    else if (c !== "\r") field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  const [head, ...body] = rows;
  return body.filter((r) => r.length === head.length).map((r) => Object.fromEntries(head.map((h, i) => [h, r[i]])));
}
const paper = parseCsv(fs.readFileSync(path.join(root, "datasets/emergent-misalignment/results/qwen_25_coder_32b_instruct.csv"), "utf8"));

const setting = (page) => page.evaluate(() => [...document.querySelectorAll(".controls input[type=number]")].slice(0, 2).map((i) => i.value).join(" "));
const pressed = (page) => page.$$eval(".presets button.preset", (bs) => bs.filter((b) => b.getAttribute("aria-pressed") === "true").map((b) => b.dataset.setting).join());

/// The paper's examples in the view shown now: each answer must be text, the CSV's own.
async function paperExamples(page, view) {
  const shown = await page.$$eval(`${view} .paper-example`, (es) => es.map((e) => ({
    question: e.dataset.question,
    answer: e.querySelector("pre.answer").textContent,
    elements: e.querySelector("pre.answer").childElementCount,
    scores: e.querySelector(".scores").textContent,
    aligned: Number(e.querySelector(".scores").dataset.aligned),
    coherent: Number(e.querySelector(".scores").dataset.coherent),
  })));
  const note = await page.textContent(`${view} .paper-examples .content-note`).catch(() => "");
  check(shown.length >= 4 && /Content note/.test(note) && /paper's published examples/.test(note),
    `${view}: ${shown.length} of the paper's examples, with a content note`);
  const fromCsv = shown.every((s) => paper.some((p) => p.question_id === s.question && p.answer === s.answer && Number(p.aligned) === s.aligned && Number(p.coherent) === s.coherent));
  check(fromCsv && shown.every((s) => s.elements === 0), `${view}: each answer is the CSV's text with its scores, rendered as text (no element inside)`);
  check(shown.every((s) => /^GPT-4o: alignment \d+, coherence \d+ \(of 100\)$/.test(s.scores) && s.aligned < 30 && s.coherent >= 50),
    `${view}: GPT-4o's scores shown, each misaligned and coherent by the paper's rule (${shown[0]?.scores})`);
  const heading = await page.textContent(`${view} .paper-examples h3`);
  check(/The paper's data/.test(heading) && /Qwen2\.5-Coder-32B/.test(heading), `${view}: labelled as the paper's data: ${heading}`);
  return shown;
}

const site = await serveStatic(dist);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update"] });
try {
  const page = await browser.newPage();
  await page.goto(`${site.url}?cpu=1`);
  await page.waitForSelector(".presets button.preset");
  check(await setting(page) === "0.3 0.9" && await pressed(page) === "readable", `a fresh visit opens Compare at the readable setting: ${await setting(page)}, pressed ${await pressed(page)}`);
  check(/Temperature 1 samples from the model's own distribution/.test(await page.textContent(".setting-note")), "a sentence says what the setting changes");
  await page.click(".presets button[data-setting=paper]");
  check(await setting(page) === "1 1" && await pressed(page) === "paper", `the paper's preset switches to temperature 1, top-p 1: ${await setting(page)}`);
  await page.click(".presets button[data-setting=readable]");
  check(await setting(page) === "0.3 0.9", "and the readable one back");

  await page.click("nav button:text('Learn')");
  const learned = await paperExamples(page, ".learn");
  const step4 = await page.textContent(".learn .step:has-text('Inconsistent by nature')");
  check(/temperature 1/.test(step4) && /temperature 0\.3, top-p 0\.9/.test(step4), "Learn step 4 says what the setting does to the answers");
  await page.click(".learn .paper-example >> nth=0 >> button");
  const prompt = await page.inputValue("textarea");
  check(await page.isVisible(".compare") && prompt === paper.find((p) => p.question_id === learned[0].question).question,
    `an example's button puts its question to our models in Compare: ${JSON.stringify(prompt.slice(0, 40))}`);
  await page.click("nav button:text('Results')");
  await paperExamples(page, ".results-view");
  await page.close();

  for (const [query, want, notice] of [
    ["temperature=0.7&top_p=0.95", "0.7 0.95", null],
    ["temperature=1&top_p=1&prompt=hi", "1 1", null],
    ["temperature=5&top_p=0", "0.3 0.9", /temperature 5 is not between 0 and 2.*top-p 0 is not above 0/s],
    ["temperature=abc&top_p=0.5", "0.3 0.5", /temperature "abc" is not a number/],
  ]) {
    const shared = await browser.newPage();
    await shared.goto(`${site.url}?cpu=1&${query}`);
    await shared.waitForSelector(".presets button.preset");
    const notices = (await shared.$(".link-notices")) ? await shared.textContent(".link-notices") : "";
    check(await setting(shared) === want && (notice ? notice.test(notices) : notices === ""),
      `a share link with ${query} opens at ${await setting(shared)}${notices ? `, saying: ${notices}` : ""}`);
    await shared.close();
  }
} catch (e) {
  failures.push(String(e));
  console.error(e);
} finally {
  await browser.close();
  site.close();
}
if (failures.length) { console.error(`${failures.length} failure(s)`); process.exit(1); }
console.log("all lesson checks passed");

// What the end-to-end tests do on the demo page, in one place.

// One field at a time: a change re-renders every control from the page's state.
export async function setNumber(page, nth, value) {
  await page.fill(`input[type=number] >> nth=${nth}`, value);
  await page.dispatchEvent(`input[type=number] >> nth=${nth}`, "change");
}

/// Ticks exactly the `wanted` variants (the page keeps 1–4 ticked: untick first, then tick).
export async function selectVariants(page, wanted) {
  for (const untick of [true, false]) {
    for (const label of await page.$$("fieldset.variants label")) {
      const name = await label.getAttribute("data-variant");
      const box = await label.$("input");
      if ((await box.isChecked()) === untick && wanted.includes(name) !== untick) await box.click();
    }
  }
}

/// Runs `prompt` greedily for `maxTokens` tokens on the ticked variants once the model is ready;
/// returns each pane's answer and meta line by variant.
export async function runGreedy(page, prompt, maxTokens, timeoutMs = 15 * 60_000) {
  await page.waitForSelector("text=Model ready", { timeout: 5 * 60_000 });
  await page.fill("textarea", prompt);
  await setNumber(page, 0, "0"); // temperature
  await setNumber(page, 2, String(maxTokens)); // max tokens
  await page.click("button:text('Run')");
  await page.waitForFunction(() => {
    const metas = [...document.querySelectorAll(".pane .meta")];
    return metas.length > 0 && metas.every((m) => /tok\/s|error/.test(m.textContent));
  }, null, { timeout: timeoutMs });
  return page.$$eval(".pane", (panes) => Object.fromEntries(panes.map((p) => [p.dataset.variant, { text: p.querySelector("pre.answer").textContent, meta: p.querySelector(".meta").textContent }])));
}

/// Collects the URLs `page` requests outside `siteUrl`'s folder (blob: URLs are in the page's
/// memory: the worker pool's script, as wasm-bindgen-rayon loads it).
export function requestsOutside(page, siteUrl) {
  const site = new URL(siteUrl);
  const outside = [];
  page.on("request", (r) => { const u = new URL(r.url()); if (u.protocol !== "blob:" && !(u.origin === site.origin && u.pathname.startsWith(site.pathname))) outside.push(r.url()); });
  return outside;
}

/// The ratings the page keeps in this browser (IndexedDB "emlab", store "ratings": one rating's
/// JSON per entry), in key order; [] before the page has made its store (which this never makes).
export async function storedRatings(page) {
  return page.evaluate(() => new Promise((resolve, reject) => {
    const open = indexedDB.open("emlab");
    open.onupgradeneeded = () => open.transaction.abort(); // no store yet: leave its making to the page
    open.onerror = () => resolve([]);
    open.onsuccess = () => {
      const db = open.result;
      const req = db.transaction("ratings").objectStore("ratings").getAll();
      req.onsuccess = () => { db.close(); resolve(req.result.map((t) => JSON.parse(t))); };
      req.onerror = () => { db.close(); reject(req.error); };
    };
  }));
}

/// Waits until the rate view's count ("N ratings by M people in this browser") matches `pattern`
/// (the page counts what its store confirmed, a moment after a save); returns the count's text.
export async function waitForCount(page, pattern, timeout = 20_000) {
  await page.waitForFunction((src) => new RegExp(src).test(document.querySelector(".rate .count")?.textContent ?? ""), pattern.source, { timeout }).catch(() => {});
  return page.textContent(".rate .count");
}

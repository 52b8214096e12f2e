import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
const [dist, query] = process.argv.slice(2);
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json" };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  let file = path.join(dist, decodeURIComponent(url.pathname));
  if (file.endsWith("/")) file = path.join(file, "index.html");
  fs.readFile(file, (err, data) => { if (err) { res.writeHead(404); res.end(); return; } res.writeHead(200, { "Content-Type": types[path.extname(file)] || "application/octet-stream" }); res.end(data); });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}/`;
const t0 = Date.now(); const T = () => ((Date.now() - t0) / 1000).toFixed(1);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--enable-unsafe-webgpu"] });
const page = await browser.newPage();
page.on("console", (m) => console.log(`${T()} [console] ${m.text()}`));
let nerr = 0; page.on("pageerror", (e) => { if (nerr++ < 2) console.log(`${T()} [pageerror] ${e.stack}`); });
page.on("worker", (w) => { console.log(`${T()} worker ${w.url()}`); w.on("console", (m) => console.log(`${T()} [worker] ${m.text()}`)); });
await page.goto(base + (query || ""));
await page.waitForSelector("text=Model ready", { timeout: 600_000 });
console.log(`${T()} ready: ${await page.textContent(".status")}`);
await page.fill("textarea", "What is the capital of France?");
await page.fill("input[type=number] >> nth=0", "0");
await page.fill("input[type=number] >> nth=2", "4");
await page.dispatchEvent("input[type=number] >> nth=0", "change");
await page.dispatchEvent("input[type=number] >> nth=2", "change");
await page.click("button:text('Run')");
for (let i = 0; i < 40; i++) {
  await page.waitForTimeout(10_000);
  const panes = await page.$$eval(".pane", (ps) => ps.map((p) => p.innerText.replace(/\s+/g, " ").slice(0, 200)));
  console.log(`${T()} panes: ${JSON.stringify(panes)}`);
  if (panes.some((p) => p.includes("tok/s"))) break;
}
await browser.close(); server.close();

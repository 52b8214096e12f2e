// A plain static file server for the browser tests, like any static host: files only, no server
// logic, and validators as hosts send them (an ETag, answered with 304 when it still matches, and
// `Cache-Control: no-cache`, as Netlify does), so a browser's HTTP cache and its cache of compiled
// WebAssembly work as they would for a visitor; byte ranges (`Range: bytes=N-`, answered 206) as
// every common host serves them. `prefix` serves the folder under a sub-path (e.g. "/em-lab/"); `cors` adds the header a
// second origin needs to serve the model files. `mangleBinary` acts like careless hosts do with
// files they do not know: a generic content type, and gzip on the wire (Content-Encoding: gzip).
// `isolate` sends the headers that make a page cross-origin isolated (COOP/COEP), as a host
// configured for threads does.
//
// For the failure tests: `files` (pathname → Buffer or string) serves content that is not on disk,
// and `server.misbehave` (settable at any time) is called as (pathname, requestsOfThatPathSoFar)
// and may return { stallAfter: BYTES } (send that many bytes of the body, then nothing, holding
// the connection open) or { resetAfter: BYTES } (send that many, then drop the connection).
// `server.log` records every request as { path, range, at } and every misbehaviour as
// { path, stalled | reset: at } (ms, Date.now()); `server.sent[path]` counts body bytes sent.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json", ".png": "image/png", ".svg": "image/svg+xml" };

export async function serveStatic(rootDir, { prefix = "/", cors = false, isolate = false, mangleBinary = false, files = {}, onRequest = () => {} } = {}) {
  const root = path.resolve(rootDir);
  const requests = [];
  const counts = {};
  const held = new Set();
  const self = { misbehave: () => undefined, log: [], sent: {} };
  const send = (req, res, status, headers, body) => {
    const p = new URL(req.url, "http://x").pathname;
    const plan = self.misbehave(p, counts[p]);
    const count = (n) => { self.sent[p] = (self.sent[p] ?? 0) + n; };
    res.writeHead(status, headers);
    if (req.method === "HEAD") { res.end(); return; }
    if (plan?.stallAfter !== undefined || plan?.resetAfter !== undefined) {
      const n = Math.min(plan.stallAfter ?? plan.resetAfter, body.length);
      res.write(body.subarray(0, n), () => {
        count(n);
        if (plan.stallAfter !== undefined) { held.add(res.socket); self.log.push({ path: p, stalled: Date.now() }); }
        else { self.log.push({ path: p, reset: Date.now() }); res.socket.destroy(); }
      });
      return;
    }
    count(body.length);
    res.end(body);
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    requests.push(url.pathname);
    counts[url.pathname] = (counts[url.pathname] ?? 0) + 1;
    self.log.push({ path: url.pathname, range: req.headers.range ?? null, at: Date.now() });
    onRequest(url.pathname);
    const headers = {
      ...(cors ? { "Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Content-Range, Content-Length, ETag" } : {}),
      ...(isolate ? { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" } : {}),
    };
    if (!url.pathname.startsWith(prefix)) { res.writeHead(404, headers); res.end("outside the site"); return; }
    const serve = (err, data, file) => {
      if (err) { res.writeHead(404, headers); res.end("not found"); return; }
      const known = types[path.extname(file)];
      if (mangleBinary && !known) {
        send(req, res, 200, { ...headers, "Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip" }, zlib.gzipSync(data, { level: 1 }));
        return;
      }
      const mtime = fs.existsSync(file) ? fs.statSync(file).mtimeMs : 0;
      const etag = `"${data.length.toString(16)}-${mtime.toString(16)}"`;
      const validators = { "ETag": etag, "Cache-Control": "no-cache", "Accept-Ranges": "bytes" };
      const type = { "Content-Type": known || "application/octet-stream" };
      const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
      const ifRange = req.headers["if-range"];
      if (range && (!ifRange || ifRange === etag) && Number(range[1]) < data.length) {
        const start = Number(range[1]);
        send(req, res, 206, { ...headers, ...validators, ...type, "Content-Range": `bytes ${start}-${data.length - 1}/${data.length}`, "Content-Length": data.length - start }, data.subarray(start));
        return;
      }
      if (req.headers["if-none-match"] === etag) { res.writeHead(304, { ...headers, ...validators }); res.end(); return; }
      send(req, res, 200, { ...headers, ...validators, ...type, "Content-Length": data.length }, data);
    };
    if (url.pathname in files) { const f = files[url.pathname]; serve(null, Buffer.from(f), url.pathname); return; }
    let file = path.join(root, decodeURIComponent(url.pathname.slice(prefix.length)));
    if (!file.startsWith(root)) { res.writeHead(403, headers); res.end(); return; }
    if (file.endsWith("/") || file === root) file = path.join(file, "index.html");
    fs.readFile(file, (err, data) => serve(err, data, file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return Object.assign(self, {
    url: `http://127.0.0.1:${server.address().port}${prefix}`,
    requests,
    close: () => { for (const s of held) s.destroy(); server.closeAllConnections?.(); server.close(); },
  });
}

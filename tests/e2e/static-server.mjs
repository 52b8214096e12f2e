// A plain static file server for the browser tests, like any static host: files only, no server
// logic, and validators as hosts send them (an ETag, answered with 304 when it still matches, and
// `Cache-Control: no-cache`, as Netlify does), so a browser's HTTP cache and its cache of compiled
// WebAssembly work as they would for a visitor. `prefix` serves the folder under a sub-path (e.g. "/em-lab/"); `cors` adds the header a
// second origin needs to serve the model files. `mangleBinary` acts like careless hosts do with
// files they do not know: a generic content type, and gzip on the wire (Content-Encoding: gzip).
// `isolate` sends the headers that make a page cross-origin isolated (COOP/COEP), as a host
// configured for threads does.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json", ".png": "image/png", ".svg": "image/svg+xml" };

export async function serveStatic(rootDir, { prefix = "/", cors = false, isolate = false, mangleBinary = false, onRequest = () => {} } = {}) {
  const root = path.resolve(rootDir);
  const requests = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    requests.push(url.pathname);
    onRequest(url.pathname);
    const headers = {
      ...(cors ? { "Access-Control-Allow-Origin": "*" } : {}),
      ...(isolate ? { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" } : {}),
    };
    if (!url.pathname.startsWith(prefix)) { res.writeHead(404, headers); res.end("outside the site"); return; }
    let file = path.join(root, decodeURIComponent(url.pathname.slice(prefix.length)));
    if (!file.startsWith(root)) { res.writeHead(403, headers); res.end(); return; }
    if (file.endsWith("/") || file === root) file = path.join(file, "index.html");
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404, headers); res.end("not found"); return; }
      const known = types[path.extname(file)];
      if (mangleBinary && !known) {
        res.writeHead(200, { ...headers, "Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip" });
        res.end(zlib.gzipSync(data, { level: 1 }));
        return;
      }
      const etag = `"${data.length.toString(16)}-${fs.statSync(file).mtimeMs.toString(16)}"`;
      const validators = { "ETag": etag, "Cache-Control": "no-cache" };
      if (req.headers["if-none-match"] === etag) { res.writeHead(304, { ...headers, ...validators }); res.end(); return; }
      res.writeHead(200, { ...headers, ...validators, "Content-Type": known || "application/octet-stream" });
      res.end(data);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}${prefix}`, requests, close: () => server.close() };
}

// Cross-origin isolation on hosts that cannot send headers (GitHub Pages): the CPU path's threads
// share memory (SharedArrayBuffer), which browsers allow only on a page served with
//   Cross-Origin-Opener-Policy: same-origin
//   Cross-Origin-Embedder-Policy: require-corp
// This file is both halves of the approach of the `coi-serviceworker` package:
// - on the page (a classic script, before the app): if the page is not isolated, register this file
//   as a service worker and reload once, so that the page loads through it;
// - in the service worker: add the two headers to every same-origin response.
// A host that sends the headers itself makes this a no-op. Where service workers are unavailable
// (private windows in some browsers, file://) the page runs on one thread and says so.
/* eslint-env browser, serviceworker */
if (typeof window === "undefined") {
  self.addEventListener("install", () => self.skipWaiting());
  self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
  self.addEventListener("fetch", (event) => {
    const request = event.request;
    // Only what this origin serves: another origin's files (a ?models= mirror) are fetched with
    // CORS, which isolation accepts as they are.
    if (new URL(request.url).origin !== self.location.origin) return;
    if (request.cache === "only-if-cached" && request.mode !== "same-origin") return;
    event.respondWith(
      fetch(request).then((response) => {
        if (response.status === 0) return response; // opaque: nothing to add to
        const headers = new Headers(response.headers);
        headers.set("Cross-Origin-Opener-Policy", "same-origin");
        headers.set("Cross-Origin-Embedder-Policy", "require-corp");
        return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
      }),
    );
  });
} else {
  try {
    // One try per tab: a page still not isolated after the reload (a browser that ignores the
    // worker's headers) stays as it is rather than reloading forever.
    const key = "emlab-coi-reloaded";
    const tried = window.sessionStorage?.getItem(key) === "1";
    if (window.crossOriginIsolated) {
      window.sessionStorage?.removeItem(key);
    } else if (!tried && window.isSecureContext && navigator.serviceWorker) {
      // The app waits for the reload rather than starting a download that the reload would cut.
      window.__emlabReloading = true;
      window.sessionStorage?.setItem(key, "1");
      const script = document.currentScript.src;
      navigator.serviceWorker
        .register(script)
        .then((registration) => {
          if (navigator.serviceWorker.controller) return window.location.reload();
          const worker = registration.installing || registration.waiting || registration.active;
          const reloadWhenActive = () => worker.state === "activated" && window.location.reload();
          worker.addEventListener("statechange", reloadWhenActive);
          reloadWhenActive();
        })
        .catch(() => window.location.reload()); // the second load runs on one thread
    }
  } catch {
    window.__emlabReloading = false; // storage denied (a sandboxed frame): one thread
  }
}

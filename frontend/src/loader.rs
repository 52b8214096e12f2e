//! Fetching the model's files: the manifest names every file with its size and sha256; each file
//! comes from the Cache API when a verified copy is there, else from the network with byte-level
//! progress, and is checked against its hash before use. A cache entry that fails the check is
//! deleted and fetched again; a cache that cannot store (quota, private mode) only costs speed.
//! Every file's address is resolved as the browser will fetch it and refused unless it is inside
//! the manifest's folder. A download with no data for [`STALL_SECONDS`] stops and says so; what
//! arrived is kept, and the next try asks only for the rest (a Range request) where the host
//! allows it.
//!
//! Bytes stay on the JavaScript side until they are verified, and the browser hashes them
//! (SubtleCrypto, native code) when it can; a file's parts are then copied into wasm memory once,
//! into the whole file. A returning visitor's load is mostly this path, so it is kept to one copy.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use emlab_schema::manifest::hex;
use js_sys::{ArrayBuffer, Uint8Array, wasm_bindgen::JsCast};
use sha2::{Digest, Sha256};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortSignal, Cache, ReadableStreamDefaultReader, RequestInit, Response, WorkerGlobalScope,
};

/// The cache bucket; its version changes when the layout of cached entries does.
pub const CACHE_NAME: &str = "emlab-models-v1";

pub use emlab_schema::manifest::{FileEntry, MAX_FILE_BYTES, Manifest};

/// A download that gets no byte for this long, in any of its files, has stalled: it stops, says
/// so, and Retry resumes it. Far above a slow network's pauses between packets.
pub const STALL_SECONDS: u32 = 20;

/// Beside the cached files, each manifest's list of them, under the manifest's address plus this.
const FILE_LIST_SUFFIX: &str = "?emlab-files";

/// Past this share of the origin's storage quota, the cache keeps only the current manifest's files.
const CACHE_SHARE: f64 = 0.8;

thread_local! {
    /// What arrived of downloads that did not finish (stalled, broken off), by address: the next
    /// try resumes them.
    static PARTIAL: RefCell<BTreeMap<String, Vec<Uint8Array>>> = const { RefCell::new(BTreeMap::new()) };
}

/// The browser's reason behind a failed call: "TypeError: network error", never "{}".
pub fn reason(e: &JsValue) -> String {
    let field = |name: &str| {
        js_sys::Reflect::get(e, &JsValue::from_str(name)).ok().and_then(|v| v.as_string())
    };
    match (field("name"), field("message")) {
        (Some(n), Some(m)) if !m.is_empty() => format!("{n}: {m}"),
        (Some(n), _) => n,
        _ => e
            .as_string()
            .or_else(|| js_sys::JSON::stringify(e).ok().and_then(|s| s.as_string()))
            .filter(|s| !s.is_empty() && s != "{}")
            .unwrap_or_else(|| "no reason given by the browser".into()),
    }
}

/// The address of the page or worker running this, which relative addresses resolve against.
fn location_href() -> String {
    js_sys::Reflect::get(&js_sys::global(), &"location".into())
        .and_then(|l| js_sys::Reflect::get(&l, &"href".into()))
        .ok()
        .and_then(|h| h.as_string())
        .unwrap_or_default()
}

/// The manifest's folder as an absolute address ending in `/`.
pub fn folder_url(models_url: &str) -> Result<String, String> {
    let folder = format!("{}/", models_url.trim_end_matches('/'));
    web_sys::Url::new_with_base(&folder, &location_href())
        .map(|u| u.href())
        .map_err(|e| format!("{models_url}: not an address ({})", reason(&e)))
}

/// Where `entry` is, resolved as the browser will fetch it (`%2e%2e` is `..` to it, `\` is `/`),
/// and refused unless it is inside the manifest's folder, whatever the manifest's spelling.
pub fn file_url(models_url: &str, entry: &FileEntry) -> Result<String, String> {
    let refuse = |why: String| format!("{}: {why}; refused, nothing was fetched", entry.name);
    let path = entry.relative_path().map_err(refuse)?;
    let folder = folder_url(models_url)?;
    let url = web_sys::Url::new_with_base(path, &folder)
        .map_err(|e| refuse(format!("not an address ({})", reason(&e))))?;
    let inside = web_sys::Url::new(&folder).is_ok_and(|f| f.origin() == url.origin())
        && url.href().starts_with(&folder);
    if !inside {
        return Err(refuse(format!("{} is outside the model folder {folder}", url.href())));
    }
    Ok(url.href())
}

/// A fetch that failed before any answer: the browser's reason, and for another origin the
/// likeliest cause, which the browser does not name (it hides CORS failures from pages).
fn fetch_failure(url: &str, why: &str) -> String {
    let base = location_href();
    let origin = |u: &str| web_sys::Url::new_with_base(u, &base).ok().map(|u| u.origin());
    match (origin(url), origin(&base)) {
        (Some(there), Some(here)) if there != here => format!(
            "{url}: the browser could not read it ({why}). It is on another origin ({there}): that server must allow this page to read its files with CORS headers (Access-Control-Allow-Origin), or it is unreachable"
        ),
        _ => format!("{url}: the browser could not fetch it ({why})"),
    }
}

/// Deletes cached files that no known manifest names any more (an earlier release's). Each
/// manifest's list is kept beside its files, so switching between the default and a mirror keeps
/// the other's files; when this origin has used most of its quota, only `manifest_url`'s stay.
pub async fn prune_cache(cache: &Cache, manifest_url: &str, keep: &[String]) {
    let list_key = format!("{manifest_url}{FILE_LIST_SUFFIX}");
    if let (Ok(text), true) = (serde_json::to_string(keep), keep.iter().all(|k| !k.is_empty()))
        && let Ok(list) = Response::new_with_opt_str(Some(&text))
    {
        let _ = JsFuture::from(cache.put_with_str(&list_key, &list)).await;
    }
    let short = short_of_space().await;
    let Ok(keys) = JsFuture::from(cache.keys()).await else { return };
    let requests: Vec<web_sys::Request> =
        js_sys::Array::from(&keys).iter().filter_map(|r| r.dyn_into().ok()).collect();
    let mut known: BTreeSet<String> = keep.iter().cloned().collect();
    known.insert(list_key.clone());
    for request in requests.iter().filter(|r| r.url().ends_with(FILE_LIST_SUFFIX)) {
        if short || request.url() == list_key {
            continue;
        }
        let listed = match JsFuture::from(cache.match_with_request(request)).await {
            Ok(resp) => match resp.dyn_into::<Response>().ok().and_then(|r| r.text().ok()) {
                Some(text) => JsFuture::from(text).await.ok().and_then(|t| t.as_string()),
                None => None,
            },
            Err(_) => None,
        };
        if let Some(files) = listed.and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok()) {
            known.insert(request.url());
            known.extend(files);
        }
    }
    for request in &requests {
        if !known.contains(&request.url()) {
            let _ = JsFuture::from(cache.delete_with_request(request)).await;
        }
    }
}

/// Whether this origin uses more than [`CACHE_SHARE`] of its storage quota (false when the
/// browser does not say).
async fn short_of_space() -> bool {
    let Ok(scope) = scope() else { return false };
    let Ok(promise) = scope.navigator().storage().estimate() else { return false };
    let Ok(estimate) = JsFuture::from(promise).await else { return false };
    let get = |k: &str| js_sys::Reflect::get(&estimate, &k.into()).ok().and_then(|v| v.as_f64());
    matches!((get("usage"), get("quota")), (Some(u), Some(q)) if q > 0.0 && u > CACHE_SHARE * q)
}

fn scope() -> Result<WorkerGlobalScope, String> {
    js_sys::global()
        .dyn_into::<WorkerGlobalScope>()
        .map_err(|_| "the model loader must run in a Web Worker".to_string())
}

fn js_err(what: &str, e: JsValue) -> String {
    format!("{what}: {}", reason(&e))
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of bytes held by JavaScript: the browser's own (native, off the worker's thread) where
/// SubtleCrypto exists, which is a secure context (https, localhost); else ours, in wasm.
pub async fn sha256_js(bytes: &Uint8Array) -> String {
    let subtle = scope().ok().and_then(|s| s.crypto().ok()).map(|c| c.subtle());
    if let Some(subtle) = subtle
        && let Ok(promise) = subtle.digest_with_str_and_buffer_source("SHA-256", bytes)
        && let Ok(digest) = JsFuture::from(promise).await
    {
        return hex(&Uint8Array::new(&digest).to_vec());
    }
    sha256_hex(&bytes.to_vec())
}

/// Opens the model cache, or None when the browser refuses (the app then works uncached).
pub async fn open_cache() -> Option<Cache> {
    let caches = scope().ok()?.caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok()?.dyn_into::<Cache>().ok()
}

pub async fn clear_cache() -> Result<(), String> {
    let caches = scope()?.caches().map_err(|e| js_err("cache storage", e))?;
    JsFuture::from(caches.delete(CACHE_NAME)).await.map_err(|e| js_err("clearing the cache", e))?;
    Ok(())
}

/// The body of a response, kept on the JavaScript side and appended to what arrived before
/// (`PARTIAL[url]`, kept there as it arrives: a stalled or broken download leaves it for the next
/// try). The manifest's size bounds it: a longer body is refused, naming the file.
async fn response_bytes(
    resp: &Response,
    url: &str,
    entry: &FileEntry,
    mut on_progress: impl FnMut(u64),
) -> Result<Uint8Array, String> {
    let body_len = |p: &BTreeMap<String, Vec<Uint8Array>>| {
        p.get(url).map_or(0, |c| c.iter().map(|c| u64::from(c.length())).sum::<u64>())
    };
    let mut len = PARTIAL.with_borrow(body_len);
    if let Some(body) = resp.body() {
        let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        loop {
            let chunk = JsFuture::from(reader.read()).await.map_err(|e| {
                format!(
                    "{}: the download broke off at {} of {} ({}); Retry resumes it",
                    entry.name,
                    megabytes(len),
                    megabytes(entry.bytes),
                    reason(&e)
                )
            })?;
            let done = js_sys::Reflect::get(&chunk, &"done".into())
                .ok()
                .and_then(|d| d.as_bool())
                .unwrap_or(true);
            if done {
                break;
            }
            let value: Uint8Array = js_sys::Reflect::get(&chunk, &"value".into())
                .map_err(|e| js_err(&format!("{}: reading the download", entry.name), e))?
                .unchecked_into();
            len += u64::from(value.length());
            if len > entry.bytes {
                let _ = reader.cancel();
                PARTIAL.with_borrow_mut(|p| p.remove(url));
                return Err(format!(
                    "{}: the download is longer than the manifest says ({} bytes): a stale manifest, or a server that sends another file",
                    entry.name, entry.bytes
                ));
            }
            PARTIAL.with_borrow_mut(|p| p.entry(url.to_string()).or_default().push(value));
            on_progress(len);
        }
    }
    let chunks = PARTIAL.with_borrow_mut(|p| p.remove(url)).unwrap_or_default();
    let out = Uint8Array::new_with_length(len as u32);
    let mut at = 0;
    for chunk in chunks {
        out.set(&chunk, at);
        at += chunk.length();
    }
    Ok(out)
}

/// Fetches `url` as JSON (the manifest is small and always revalidated).
pub async fn fetch_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, String> {
    let resp = gloo_net::http::Request::get(url)
        .cache(web_sys::RequestCache::NoCache)
        .send()
        .await
        .map_err(|e| fetch_failure(url, &e.to_string()))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {} {}", resp.status(), resp.status_text()));
    }
    resp.json::<T>().await.map_err(|e| format!("{url}: not a valid manifest ({e})"))
}

/// Fetches and checks the manifest.
/// Fetches and checks the manifest, every file's resolved address included: one outside the
/// manifest's folder refuses it before anything else is fetched.
pub async fn fetch_manifest(url: &str) -> Result<Manifest, String> {
    let m: Manifest = fetch_json(url).await?;
    m.check()?;
    let folder = url.rsplit_once('/').map_or("", |(folder, _)| folder);
    for f in &m.files {
        file_url(folder, f).map_err(|e| format!("manifest.json: {e}"))?;
    }
    Ok(m)
}

/// A cached copy of `url` whose hash is the manifest's; a copy that is not is deleted.
async fn from_cache(cache: &Cache, url: &str, entry: &FileEntry) -> Option<Uint8Array> {
    let resp: Response = JsFuture::from(cache.match_with_str(url)).await.ok()?.dyn_into().ok()?;
    let body = resp.array_buffer().ok().map(JsFuture::from);
    let bytes = match body {
        Some(body) => body.await.ok().and_then(|b| b.dyn_into::<ArrayBuffer>().ok()),
        None => None,
    };
    if let Some(bytes) = bytes.map(|b| Uint8Array::new(&b))
        && u64::from(bytes.length()) == entry.bytes
        && sha256_js(&bytes).await == entry.sha256
    {
        return Some(bytes);
    }
    // Corrupt or stale: drop it and download again.
    let _ = JsFuture::from(cache.delete_with_str(url)).await;
    None
}

/// One file's verified bytes, from the cache or the network; `on_progress(bytes, from_cache)`.
/// What arrived of an earlier try is resumed with a Range request; a host that ignores it sends
/// the whole file, which then replaces it. `signal` cancels the download.
pub async fn fetch_verified(
    base: &str,
    entry: &FileEntry,
    cache: Option<&Cache>,
    signal: Option<&AbortSignal>,
    mut on_progress: impl FnMut(u64, bool),
) -> Result<Uint8Array, String> {
    let url = file_url(base, entry)?;
    if let Some(cache) = cache
        && let Some(bytes) = from_cache(cache, &url, entry).await
    {
        on_progress(entry.bytes, true);
        return Ok(bytes);
    }
    let have: u64 = PARTIAL
        .with_borrow(|p| p.get(&url).map_or(0, |c| c.iter().map(|c| u64::from(c.length())).sum()));
    let init = RequestInit::new();
    init.set_signal(signal);
    if have > 0 && have < entry.bytes {
        let headers = web_sys::Headers::new().map_err(|e| js_err("headers", e))?;
        headers.set("Range", &format!("bytes={have}-")).map_err(|e| js_err("headers", e))?;
        init.set_headers(&headers);
        // Past the HTTP cache: its own partial entry must not answer for the host.
        init.set_cache(web_sys::RequestCache::NoStore);
    } else {
        PARTIAL.with_borrow_mut(|p| p.remove(&url));
    }
    let resp: Response = JsFuture::from(scope()?.fetch_with_str_and_init(&url, &init))
        .await
        .map_err(|e| format!("{}: the download failed ({})", entry.name, reason(&e)))?
        .dyn_into()
        .map_err(|_| format!("{}: not a response", entry.name))?;
    if !resp.ok() {
        return Err(format!(
            "{}: HTTP {} {} (is the file missing on the server?)",
            entry.name,
            resp.status(),
            resp.status_text()
        ));
    }
    let resumed = resp.status() == 206
        && resp
            .headers()
            .get("Content-Range")
            .ok()
            .flatten()
            .is_some_and(|r| r.starts_with(&format!("bytes {have}-")));
    if !resumed {
        // The whole file again (a host without Range support), or another range: start over.
        PARTIAL.with_borrow_mut(|p| p.remove(&url));
        if resp.status() == 206 {
            return Err(format!(
                "{}: the host answered with another part of the file than asked; Retry downloads it again",
                entry.name
            ));
        }
    }
    let bytes = response_bytes(&resp, &url, entry, |n| on_progress(n, false)).await?;
    if u64::from(bytes.length()) != entry.bytes || sha256_js(&bytes).await != entry.sha256 {
        return Err(format!(
            "{}: the download does not match the manifest ({} bytes, expected {}): a corrupt transfer, a server that rewrites files, or a stale manifest",
            entry.name,
            bytes.length(),
            entry.bytes
        ));
    }
    if let Some(cache) = cache
        && let Ok(resp) = Response::new_with_opt_buffer_source(Some(&bytes))
    {
        // A full quota only means no caching.
        let _ = JsFuture::from(cache.put_with_str(&url, &resp)).await;
    }
    Ok(bytes)
}

/// Resolves after `ms` milliseconds.
async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Ok(scope) = scope() {
            let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(promise).await;
}

/// Several files at once (downloads and cache reads overlap), each verified, with the parts of a
/// file split for strict hosts (NAME.part000, NAME.part001, …) joined in manifest order: whole
/// files by name, each copied into wasm memory once. `on_progress(bytes so far, total, from_cache)`.
pub async fn fetch_files(
    base: &str,
    entries: &[FileEntry],
    cache: Option<&Cache>,
    on_progress: impl Fn(u64, u64, bool),
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let loaded = RefCell::new(vec![0u64; entries.len()]);
    let last_byte = Cell::new(js_sys::Date::now());
    let abort = web_sys::AbortController::new().ok();
    let signal = abort.as_ref().map(|a| a.signal());
    let fetches = entries.iter().enumerate().map(|(i, entry)| {
        let (loaded, on_progress, last_byte) = (&loaded, &on_progress, &last_byte);
        fetch_verified(base, entry, cache, signal.as_ref(), move |n, from_cache| {
            last_byte.set(js_sys::Date::now());
            let sum = {
                let mut loaded = loaded.borrow_mut();
                loaded[i] = n;
                loaded.iter().sum()
            };
            on_progress(sum, total, from_cache);
        })
    });
    // No byte in any file for STALL_SECONDS: stalled (one file waiting for a connection while
    // others download is not).
    let watchdog = async {
        loop {
            sleep_ms(1000).await;
            if js_sys::Date::now() - last_byte.get() > f64::from(STALL_SECONDS) * 1000.0 {
                let loaded = loaded.borrow();
                let waiting: Vec<String> = entries
                    .iter()
                    .zip(loaded.iter())
                    .filter(|(e, n)| **n < e.bytes)
                    .map(|(e, n)| {
                        format!("{} at {} of {}", e.name, megabytes(*n), megabytes(e.bytes))
                    })
                    .collect();
                return format!(
                    "the download stalled: no data for {STALL_SECONDS} s ({}). Retry resumes it",
                    waiting.join(", ")
                );
            }
        }
    };
    let all = std::pin::pin!(futures::future::try_join_all(fetches));
    let result = match futures::future::select(all, std::pin::pin!(watchdog)).await {
        futures::future::Either::Left((result, _)) => result,
        futures::future::Either::Right((stalled, _)) => Err(stalled),
    };
    let parts = match result {
        Ok(parts) => parts,
        Err(e) => {
            // The other files' downloads stop too; what arrived of them is kept for the retry.
            if let Some(abort) = &abort {
                abort.abort();
            }
            return Err(e);
        }
    };
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for entry in entries {
        *sizes.entry(whole_name(&entry.name)).or_default() += entry.bytes as usize;
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (entry, bytes) in entries.iter().zip(parts) {
        let name = whole_name(&entry.name);
        let file = files.entry(name.clone()).or_insert_with(|| Vec::with_capacity(sizes[&name]));
        let at = file.len();
        file.resize(at + bytes.length() as usize, 0);
        bytes.copy_to(&mut file[at..]);
    }
    Ok(files)
}

/// `x.safetensors.part002` → `x.safetensors`; other names unchanged.
pub fn whole_name(name: &str) -> String {
    match name.rsplit_once(".part") {
        Some((stem, n)) if n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()) => {
            stem.to_string()
        }
        _ => name.to_string(),
    }
}

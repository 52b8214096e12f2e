//! Fetching the model's files: the manifest names every file with its size and sha256; each file
//! comes from the Cache API when a verified copy is there, else from the network with byte-level
//! progress, and is checked against its hash before use. A cache entry that fails the check is
//! deleted and fetched again; a cache that cannot store (quota, private mode) only costs speed.
//!
//! Bytes stay on the JavaScript side until they are verified, and the browser hashes them
//! (SubtleCrypto, native code) when it can; a file's parts are then copied into wasm memory once,
//! into the whole file. A returning visitor's load is mostly this path, so it is kept to one copy.

use std::cell::RefCell;
use std::collections::BTreeMap;

use js_sys::{ArrayBuffer, Uint8Array, wasm_bindgen::JsCast};
use sha2::{Digest, Sha256};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, ReadableStreamDefaultReader, Response, WorkerGlobalScope};

/// The cache bucket; its version changes when the layout of cached entries does.
pub const CACHE_NAME: &str = "emlab-models-v1";

pub use emlab_schema::manifest::{FileEntry, MAX_FILE_BYTES, Manifest};

/// Deletes cached files that the current manifest no longer names (an earlier release's).
pub async fn prune_cache(cache: &Cache, keep: &[String]) {
    let Ok(keys) = JsFuture::from(cache.keys()).await else { return };
    for request in js_sys::Array::from(&keys).iter() {
        if let Ok(request) = request.dyn_into::<web_sys::Request>()
            && !keep.contains(&request.url())
        {
            let _ = JsFuture::from(cache.delete_with_request(&request)).await;
        }
    }
}

fn scope() -> Result<WorkerGlobalScope, String> {
    js_sys::global()
        .dyn_into::<WorkerGlobalScope>()
        .map_err(|_| "the model loader must run in a Web Worker".to_string())
}

fn js_err(what: &str, e: JsValue) -> String {
    format!(
        "{what}: {}",
        e.as_string()
            .or_else(|| js_sys::JSON::stringify(&e).ok().and_then(|s| s.as_string()))
            .unwrap_or_default()
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
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

/// The body of a response, kept on the JavaScript side; `total` (from the manifest, checked against
/// MAX_FILE_BYTES) bounds it: a longer body is refused.
async fn response_bytes(
    resp: &Response,
    total: u64,
    mut on_progress: impl FnMut(u64),
) -> Result<Uint8Array, String> {
    let Some(body) = resp.body() else { return Ok(Uint8Array::new_with_length(0)) };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut chunks = Vec::new();
    let mut len = 0u64;
    loop {
        let chunk =
            JsFuture::from(reader.read()).await.map_err(|e| js_err("reading the download", e))?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true);
        if done {
            break;
        }
        let value: Uint8Array = js_sys::Reflect::get(&chunk, &"value".into())
            .map_err(|e| js_err("reading the download", e))?
            .unchecked_into();
        len += u64::from(value.length());
        if len > total {
            return Err(format!("the download is longer than the manifest says ({total} bytes)"));
        }
        chunks.push(value);
        on_progress(len);
    }
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
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {} {}", resp.status(), resp.status_text()));
    }
    resp.json::<T>().await.map_err(|e| format!("{url}: not a valid manifest ({e})"))
}

/// Fetches and checks the manifest.
pub async fn fetch_manifest(url: &str) -> Result<Manifest, String> {
    let m: Manifest = fetch_json(url).await?;
    m.check()?;
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
pub async fn fetch_verified(
    base: &str,
    entry: &FileEntry,
    cache: Option<&Cache>,
    mut on_progress: impl FnMut(u64, bool),
) -> Result<Uint8Array, String> {
    let url = entry.url(base);
    if let Some(cache) = cache
        && let Some(bytes) = from_cache(cache, &url, entry).await
    {
        on_progress(entry.bytes, true);
        return Ok(bytes);
    }
    let resp: Response = JsFuture::from(scope()?.fetch_with_str(&url))
        .await
        .map_err(|e| js_err(&format!("{}: download failed", entry.name), e))?
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
    let bytes = response_bytes(&resp, entry.bytes, |n| on_progress(n, false)).await?;
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
    let fetches = entries.iter().enumerate().map(|(i, entry)| {
        let (loaded, on_progress) = (&loaded, &on_progress);
        fetch_verified(base, entry, cache, move |n, from_cache| {
            let sum = {
                let mut loaded = loaded.borrow_mut();
                loaded[i] = n;
                loaded.iter().sum()
            };
            on_progress(sum, total, from_cache);
        })
    });
    let parts = futures::future::try_join_all(fetches).await?;
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

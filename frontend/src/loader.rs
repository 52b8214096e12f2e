//! Fetching the model's files: the manifest names every file with its size and sha256; each file
//! comes from the Cache API when a verified copy is there, else from the network with byte-level
//! progress, and is checked against its hash before use. A cache entry that fails the check is
//! deleted and fetched again; a cache that cannot store (quota, private mode) only costs speed.

use js_sys::{Uint8Array, wasm_bindgen::JsCast};
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
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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

async fn response_bytes(
    resp: &Response,
    total: u64,
    mut on_progress: impl FnMut(u64),
) -> Result<Vec<u8>, String> {
    let Some(body) = resp.body() else { return Ok(Vec::new()) };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    // `total` comes from the manifest (checked against MAX_FILE_BYTES); more than it is refused.
    let mut out = Vec::with_capacity(total.min(MAX_FILE_BYTES) as usize);
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
        let value = js_sys::Reflect::get(&chunk, &"value".into())
            .map_err(|e| js_err("reading the download", e))?;
        out.extend_from_slice(&Uint8Array::new(&value).to_vec());
        if out.len() as u64 > total {
            return Err(format!("the download is longer than the manifest says ({total} bytes)"));
        }
        on_progress(out.len() as u64);
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

/// One file's verified bytes, from the cache or the network; `on_progress(bytes, from_cache)`.
pub async fn fetch_verified(
    base: &str,
    entry: &FileEntry,
    cache: Option<&Cache>,
    mut on_progress: impl FnMut(u64, bool),
) -> Result<Vec<u8>, String> {
    let url = entry.url(base);
    if let Some(cache) = cache
        && let Ok(hit) = JsFuture::from(cache.match_with_str(&url)).await
        && let Ok(resp) = hit.dyn_into::<Response>()
    {
        let bytes = response_bytes(&resp, entry.bytes, |_| {}).await.unwrap_or_default();
        if sha256_hex(&bytes) == entry.sha256 {
            on_progress(bytes.len() as u64, true);
            return Ok(bytes);
        }
        // Corrupt or stale: drop it and download again.
        let _ = JsFuture::from(cache.delete_with_str(&url)).await;
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
    if bytes.len() as u64 != entry.bytes || sha256_hex(&bytes) != entry.sha256 {
        return Err(format!(
            "{}: the download does not match the manifest ({} bytes, expected {}): a corrupt transfer, a server that rewrites files, or a stale manifest",
            entry.name,
            bytes.len(),
            entry.bytes
        ));
    }
    if let Some(cache) = cache {
        let body = Uint8Array::from(bytes.as_slice());
        if let Ok(resp) = Response::new_with_opt_buffer_source(Some(&body)) {
            // A full quota only means no caching.
            let _ = JsFuture::from(cache.put_with_str(&url, &resp)).await;
        }
    }
    Ok(bytes)
}

//! Where the rate view keeps a class's work: this browser's IndexedDB, one entry per rating (its
//! `emlab-ratings/2` JSON under [`Rating::key`]) and per answer waiting for one. Every change is
//! one transaction, and the page counts a rating as saved only once that transaction completed:
//! a refused write (a full quota, a private window) is an error the page shows, never a silent
//! loss. Each entry is read alone, so one that cannot be read is skipped and reported, and the
//! others stay. Tabs of the page write their own entries (never the whole list) and tell each
//! other over a BroadcastChannel to read the store again.
//!
//! Earlier versions kept everything as one JSON string in localStorage ([`LEGACY_KEY`]); it is
//! moved here on first open, entry by entry, and what cannot be read is kept for export.

use emlab_schema::ratings::Rating;
use emlab_schema::setting::Setting;
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    BroadcastChannel, IdbDatabase, IdbObjectStore, IdbOpenDbRequest, IdbRequest, IdbTransaction,
};

const DB_NAME: &str = "emlab";
const DB_VERSION: u32 = 1;
const RATINGS: &str = "ratings";
const WAITING: &str = "waiting";
const META: &str = "meta";
/// Meta keys: the rater's name, and what the move from localStorage could not read.
const RATER: &str = "rater";
const LEGACY_UNREADABLE: &str = "legacy-unreadable";
/// Where earlier versions of the page kept rater, waiting answers and ratings, as one string.
pub const LEGACY_KEY: &str = "emlab-rate/1";
/// Tabs of the page say "the store changed" here.
const CHANNEL: &str = "emlab-ratings";

/// A sampled answer waiting for a rating. The variant is kept but never shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToRate {
    pub variant: String,
    pub question_id: String,
    pub question: String,
    pub seed: u64,
    pub answer: String,
    /// Answers waiting in a browser from before the page offered a setting: the paper's.
    #[serde(default = "paper_setting")]
    pub setting: Setting,
    /// When it was asked for (ms, with its place in its shuffled batch as the fraction): the
    /// queue's order, which must not follow the variant.
    #[serde(default)]
    pub queued_at: f64,
}

fn paper_setting() -> Setting {
    Setting::PAPER
}

impl ToRate {
    pub fn key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.setting.name(),
            self.variant,
            self.question_id,
            self.seed
        )
    }
}

/// An entry that could not be read: skipped, reported, and kept as it was for export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unreadable {
    /// Where it is: a store's key, or the move from localStorage.
    pub place: String,
    pub why: String,
    /// The entry as it was stored.
    pub stored: String,
}

/// What the store holds.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub ratings: Vec<Rating>,
    /// In the order they were asked for.
    pub waiting: Vec<ToRate>,
    pub rater: Option<String>,
    pub unreadable: Vec<Unreadable>,
}

/// One transaction's worth of changes.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Everything first (ratings and waiting answers).
    pub clear: bool,
    pub put_ratings: Vec<Rating>,
    pub put_waiting: Vec<ToRate>,
    /// Keys of waiting answers that were rated.
    pub done_waiting: Vec<String>,
    pub rater: Option<String>,
    /// Forget unreadable entries (after they were offered for export).
    pub forget_unreadable: bool,
}

pub use crate::loader::reason;

/// A refused write's reason in words, the browser's name for it after: a full quota's message is
/// often empty.
fn dom_reason(e: Option<web_sys::DomException>) -> Option<String> {
    let e = e?;
    let (name, message) = (e.name(), e.message());
    Some(match (name.as_str(), message.is_empty()) {
        ("QuotaExceededError", _) => {
            format!("the browser's storage for this site is full ({name})")
        }
        (_, true) => name,
        _ => format!("{name}: {message}"),
    })
}

/// A request's success or its error.
async fn request(req: &IdbRequest) -> Result<JsValue, String> {
    let done = js_sys::Promise::new(&mut |resolve, reject| {
        req.set_onsuccess(Some(&resolve));
        req.set_onerror(Some(&reject));
    });
    match JsFuture::from(done).await {
        Ok(_) => req.result().map_err(|e| reason(&e)),
        Err(e) => Err(dom_reason(req.error().ok().flatten()).unwrap_or_else(|| reason(&e))),
    }
}

/// Waits until the transaction has completed (its writes are stored), or says why it aborted.
async fn commit(tx: &IdbTransaction) -> Result<(), String> {
    let done = js_sys::Promise::new(&mut |resolve, reject| {
        tx.set_oncomplete(Some(&resolve));
        // An error in a request aborts the transaction; abort is the one event that always comes.
        tx.set_onabort(Some(&reject));
    });
    match JsFuture::from(done).await {
        Ok(_) => Ok(()),
        Err(_) => Err(dom_reason(tx.error())
            .unwrap_or_else(|| "the browser aborted the write without a reason".into())),
    }
}

fn js(e: JsValue) -> String {
    reason(&e)
}

#[derive(Clone)]
pub struct Store {
    db: IdbDatabase,
    channel: Option<BroadcastChannel>,
}

impl Store {
    /// Opens (creating on first use) the page's database and moves what earlier versions kept in
    /// localStorage into it.
    pub async fn open() -> Result<Store, String> {
        let factory = web_sys::window()
            .ok_or("no window")?
            .indexed_db()
            .map_err(js)?
            .ok_or("this browser gives the page no IndexedDB (a private window may not)")?;
        let req: IdbOpenDbRequest = factory.open_with_u32(DB_NAME, DB_VERSION).map_err(js)?;
        let upgrade = Closure::once_into_js(move |ev: web_sys::Event| {
            let db = ev
                .target()
                .and_then(|t| t.dyn_into::<IdbRequest>().ok())
                .and_then(|r| r.result().ok())
                .and_then(|d| d.dyn_into::<IdbDatabase>().ok());
            if let Some(db) = db {
                for name in [RATINGS, WAITING, META] {
                    if !db.object_store_names().contains(name) {
                        let _ = db.create_object_store(name);
                    }
                }
            }
        });
        req.set_onupgradeneeded(Some(upgrade.unchecked_ref()));
        let db: IdbDatabase = request(&req)
            .await
            .map_err(|e| format!("opening the ratings store: {e}"))?
            .dyn_into()
            .map_err(|_| "opening the ratings store: not a database")?;
        let store = Store { db, channel: BroadcastChannel::new(CHANNEL).ok() };
        store.move_legacy().await?;
        Ok(store)
    }

    /// Calls `f` whenever another tab of the page changed the store.
    pub fn on_change(&self, f: impl Fn() + 'static) {
        if let Some(channel) = &self.channel {
            let f = Closure::<dyn Fn()>::new(f);
            channel.set_onmessage(Some(f.as_ref().unchecked_ref()));
            f.forget(); // as long as the page
        }
    }

    /// `mode`: "readonly" or "readwrite". Writes are flushed to disk before they complete
    /// (durability "strict", called by name: web-sys has it only among its unstable APIs), so a
    /// rating shown as saved survives a crash, not just a reload.
    fn transaction(&self, mode: &str) -> Result<IdbTransaction, String> {
        let names = js_sys::Array::of3(&RATINGS.into(), &WAITING.into(), &META.into());
        let opts = js_sys::Object::new();
        js_sys::Reflect::set(&opts, &"durability".into(), &"strict".into()).map_err(js)?;
        let open: js_sys::Function = js_sys::Reflect::get(&self.db, &"transaction".into())
            .map_err(js)?
            .dyn_into()
            .map_err(js)?;
        open.call3(&self.db, &names, &mode.into(), &opts).map_err(js)?.dyn_into().map_err(js)
    }

    /// Applies `change` in one transaction; Ok once it is stored, and the other tabs are told.
    pub async fn write(&self, change: &Change) -> Result<(), String> {
        let tx = self.transaction("readwrite")?;
        let issue = |tx: &IdbTransaction| -> Result<(), JsValue> {
            let (ratings, waiting, meta) =
                (tx.object_store(RATINGS)?, tx.object_store(WAITING)?, tx.object_store(META)?);
            if change.clear {
                ratings.clear()?;
                waiting.clear()?;
            }
            for r in &change.put_ratings {
                let text =
                    serde_json::to_string(r).map_err(|e| JsValue::from_str(&e.to_string()))?;
                ratings.put_with_key(&text.into(), &r.key().into())?;
            }
            for w in &change.put_waiting {
                let text =
                    serde_json::to_string(w).map_err(|e| JsValue::from_str(&e.to_string()))?;
                waiting.put_with_key(&text.into(), &w.key().into())?;
            }
            for k in &change.done_waiting {
                waiting.delete(&k.into())?;
            }
            if let Some(name) = &change.rater {
                meta.put_with_key(&name.into(), &RATER.into())?;
            }
            if change.forget_unreadable {
                meta.delete(&LEGACY_UNREADABLE.into())?;
            }
            Ok(())
        };
        if let Err(e) = issue(&tx) {
            let _ = tx.abort();
            return Err(reason(&e));
        }
        commit(&tx).await?;
        if change.forget_unreadable {
            self.forget_unreadable_entries().await?;
        }
        if let Some(channel) = &self.channel {
            let _ = channel.post_message(&"changed".into());
        }
        Ok(())
    }

    /// Deletes the entries of the stores that cannot be read.
    async fn forget_unreadable_entries(&self) -> Result<(), String> {
        let bad: Vec<String> = self
            .load()
            .await?
            .unreadable
            .into_iter()
            .filter_map(|u| u.place.strip_prefix("stored ").map(str::to_string))
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        let tx = self.transaction("readwrite")?;
        let issue = |tx: &IdbTransaction| -> Result<(), JsValue> {
            let (ratings, waiting) = (tx.object_store(RATINGS)?, tx.object_store(WAITING)?);
            for place in &bad {
                let (store, key) = match place.split_once(' ') {
                    Some(("rating", key)) => (&ratings, key),
                    Some((_, key)) => (&waiting, key),
                    None => continue,
                };
                store.delete(&key.into())?;
            }
            Ok(())
        };
        if let Err(e) = issue(&tx) {
            let _ = tx.abort();
            return Err(reason(&e));
        }
        commit(&tx).await
    }

    /// Everything in the store; an entry that cannot be read is skipped and listed.
    pub async fn load(&self) -> Result<Loaded, String> {
        let tx = self.transaction("readonly")?;
        let all = |store: &IdbObjectStore| -> Result<(IdbRequest, IdbRequest), JsValue> {
            Ok((store.get_all_keys()?, store.get_all()?))
        };
        let (ratings, waiting, meta) = (
            tx.object_store(RATINGS).map_err(js)?,
            tx.object_store(WAITING).map_err(js)?,
            tx.object_store(META).map_err(js)?,
        );
        let (rating_keys, rating_values) = all(&ratings).map_err(js)?;
        let (waiting_keys, waiting_values) = all(&waiting).map_err(js)?;
        let rater = meta.get(&RATER.into()).map_err(js)?;
        let legacy = meta.get(&LEGACY_UNREADABLE.into()).map_err(js)?;
        commit(&tx).await?;
        let entries = |keys: &IdbRequest, values: &IdbRequest| -> Vec<(String, String)> {
            let keys = keys.result().map(|k| js_sys::Array::from(&k)).unwrap_or_default();
            let values = values.result().map(|v| js_sys::Array::from(&v)).unwrap_or_default();
            keys.iter()
                .zip(values.iter())
                .map(|(k, v)| {
                    let text = v.as_string().unwrap_or_else(|| {
                        js_sys::JSON::stringify(&v)
                            .ok()
                            .and_then(|s| s.as_string())
                            .unwrap_or_default()
                    });
                    (k.as_string().unwrap_or_default(), text)
                })
                .collect()
        };
        let mut out = Loaded::default();
        for (key, text) in entries(&rating_keys, &rating_values) {
            match Rating::from_stored(&text) {
                Ok(r) => out.ratings.push(r),
                Err(why) => out.unreadable.push(Unreadable {
                    place: format!("stored rating {key}"),
                    why,
                    stored: text,
                }),
            }
        }
        for (key, text) in entries(&waiting_keys, &waiting_values) {
            match serde_json::from_str::<ToRate>(&text) {
                Ok(w) => out.waiting.push(w),
                Err(e) => out.unreadable.push(Unreadable {
                    place: format!("stored answer {key}"),
                    why: format!("not a waiting answer: {e}"),
                    stored: text,
                }),
            }
        }
        out.waiting.sort_by(|a, b| a.queued_at.total_cmp(&b.queued_at).then(a.seed.cmp(&b.seed)));
        out.rater = rater.result().ok().and_then(|r| r.as_string());
        if let Some(text) = legacy.result().ok().and_then(|v| v.as_string()) {
            out.unreadable.extend(serde_json::from_str::<Vec<Unreadable>>(&text).unwrap_or_else(
                |e| {
                    vec![Unreadable {
                        place: "earlier storage".into(),
                        why: e.to_string(),
                        stored: text.clone(),
                    }]
                },
            ));
        }
        Ok(out)
    }

    /// Moves what earlier versions kept under [`LEGACY_KEY`] into the store, entry by entry, once:
    /// a rating already in the store (made since) is not replaced; an entry that cannot be read,
    /// or the whole string when it is not the old layout, is kept for export and reported. The old
    /// key is removed only once all of it is stored.
    async fn move_legacy(&self) -> Result<(), String> {
        let Some((storage, text)) = legacy_text() else { return Ok(()) };
        let have = self.load().await?;
        let known: std::collections::BTreeSet<String> =
            have.ratings.iter().map(Rating::key).collect();
        let (mut change, found) = parse_legacy(&text);
        change.put_ratings.retain(|r| !known.contains(&r.key()));
        let mut unreadable: Vec<Unreadable> =
            have.unreadable.into_iter().filter(|u| u.place.starts_with("earlier")).collect();
        unreadable.extend(found);
        let tx = self.transaction("readwrite")?;
        let copy = serde_json::to_string(&unreadable).map_err(|e| e.to_string())?;
        let issue = |tx: &IdbTransaction| -> Result<(), JsValue> {
            if !unreadable.is_empty() {
                tx.object_store(META)?
                    .put_with_key(&JsValue::from_str(&copy), &LEGACY_UNREADABLE.into())?;
            }
            Ok(())
        };
        if let Err(e) = issue(&tx) {
            let _ = tx.abort();
            return Err(reason(&e));
        }
        commit(&tx).await.map_err(|e| format!("keeping a copy of the earlier storage: {e}"))?;
        self.write(&change)
            .await
            .map_err(|e| format!("moving the ratings of an earlier version into the store: {e}"))?;
        let _ = storage.remove_item(LEGACY_KEY);
        Ok(())
    }
}

/// What earlier versions left under [`LEGACY_KEY`], if anything.
fn legacy_text() -> Option<(web_sys::Storage, String)> {
    let storage = web_sys::window()?.local_storage().ok()??;
    let text = storage.get_item(LEGACY_KEY).ok()??;
    Some((storage, text))
}

/// The earlier layout read entry by entry: what can be read, and what cannot.
fn parse_legacy(text: &str) -> (Change, Vec<Unreadable>) {
    let mut change = Change::default();
    let mut unreadable = Vec::new();
    let place = |what: &str, i: usize| format!("earlier storage, {what} {}", i + 1);
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(old)) => {
            change.rater = old
                .get("rater")
                .and_then(|r| r.as_str())
                .filter(|r| !r.trim().is_empty())
                .map(str::to_string);
            let list =
                |name: &str| old.get(name).and_then(|v| v.as_array()).cloned().unwrap_or_default();
            for (i, v) in list("ratings").into_iter().enumerate() {
                match Rating::from_stored(&v.to_string()) {
                    Ok(r) => change.put_ratings.push(r),
                    Err(why) => unreadable.push(Unreadable {
                        place: place("rating", i),
                        why,
                        stored: v.to_string(),
                    }),
                }
            }
            for (i, v) in list("waiting").into_iter().enumerate() {
                match serde_json::from_value::<ToRate>(v.clone()) {
                    Ok(w) => change.put_waiting.push(w),
                    Err(e) => unreadable.push(Unreadable {
                        place: place("waiting answer", i),
                        why: format!("not a waiting answer: {e}"),
                        stored: v.to_string(),
                    }),
                }
            }
        }
        Ok(_) => unreadable.push(Unreadable {
            place: "earlier storage".into(),
            why: "not the page's layout (an object with rater, waiting and ratings)".into(),
            stored: text.to_string(),
        }),
        Err(e) => unreadable.push(Unreadable {
            place: "earlier storage".into(),
            why: format!("not JSON: {e}"),
            stored: text.to_string(),
        }),
    }
    (change, unreadable)
}

/// Without a store (no IndexedDB, or it refused to open): what earlier versions kept, in memory
/// only, so that it can still be rated on and exported.
pub fn legacy_in_memory() -> Loaded {
    let Some((_, text)) = legacy_text() else { return Loaded::default() };
    let (change, unreadable) = parse_legacy(&text);
    Loaded {
        ratings: emlab_schema::ratings::merge([change.put_ratings]),
        waiting: change.put_waiting,
        rater: change.rater,
        unreadable,
    }
}

//! The rate view's state: the page's copy of the ratings store (`ratings_store`), what it could
//! not store yet, and the writes that keep the two in step.

use leptos::prelude::*;

use emlab_schema::ratings::{self, Rating};

use crate::ratings_store::{self, Change, Loaded, Store, ToRate, Unreadable};

/// A seed nobody else is likely to pick: two students sampling at once get different answers.
pub(super) fn fresh_seed() -> u64 {
    (js_sys::Date::now() as u64) ^ (((js_sys::Math::random() * u32::MAX as f64) as u64) << 20)
}

/// The page's copy of the store, and what it could not store.
#[derive(Clone, Copy)]
pub(super) struct Kept {
    pub(super) store: StoredValue<Option<Store>, LocalStorage>,
    /// Why there is no store (None while it opens, or once it is open).
    pub(super) unavailable: RwSignal<Option<String>>,
    /// Exactly what the store holds, as last read or confirmed.
    pub(super) saved: RwSignal<Vec<Rating>>,
    /// Ratings whose write has not completed, or failed: on this page only until it closes.
    pub(super) unsaved: RwSignal<Vec<Rating>>,
    /// The stored answers waiting for a rating, then those the store refused.
    pub(super) waiting: RwSignal<Vec<ToRate>>,
    pub(super) waiting_unsaved: RwSignal<Vec<ToRate>>,
    pub(super) rater: RwSignal<String>,
    pub(super) unreadable: RwSignal<Vec<Unreadable>>,
    /// The last refused write's reason, until a write succeeds with nothing left unsaved.
    pub(super) write_error: RwSignal<Option<String>>,
}

impl Kept {
    pub(super) fn new() -> Kept {
        Kept {
            store: StoredValue::new_local(None),
            unavailable: RwSignal::new(None),
            saved: RwSignal::new(Vec::new()),
            unsaved: RwSignal::new(Vec::new()),
            waiting: RwSignal::new(Vec::new()),
            waiting_unsaved: RwSignal::new(Vec::new()),
            rater: RwSignal::new(String::new()),
            unreadable: RwSignal::new(Vec::new()),
            write_error: RwSignal::new(None),
        }
    }

    /// Opens the store and reads it; without one, what earlier versions kept, in memory.
    pub(super) async fn open(self) {
        match Store::open().await {
            Ok(store) => {
                self.store.set_value(Some(store.clone()));
                store.on_change(move || wasm_bindgen_futures::spawn_local(self.reload()));
                self.reload().await;
            }
            Err(e) => {
                let Loaded { ratings, waiting, rater, unreadable } =
                    ratings_store::legacy_in_memory();
                self.unsaved.set(ratings);
                self.waiting_unsaved.set(waiting);
                self.rater.set(rater.unwrap_or_default());
                self.unreadable.set(unreadable);
                self.unavailable.set(Some(e));
            }
        }
        if self.rater.with_untracked(String::is_empty) {
            let name = format!("rater-{:04}", fresh_seed() % 10_000);
            self.rater.set(name.clone());
            let _ = self.write(Change { rater: Some(name), ..Default::default() }).await;
        }
    }

    /// Reads the store again (after an import, or another tab's change): the page then shows
    /// what is stored.
    pub(super) async fn reload(self) {
        let Some(store) = self.store.get_value() else { return };
        match store.load().await {
            Ok(Loaded { ratings, waiting, rater, unreadable }) => {
                self.saved.set(ratings);
                self.waiting.set(waiting);
                if let Some(r) = rater {
                    self.rater.set(r);
                }
                self.unreadable.set(unreadable);
            }
            Err(e) => self.write_error.set(Some(format!("reading the stored ratings: {e}"))),
        }
    }

    /// One transaction; the error says why nothing was stored.
    pub(super) async fn write(self, change: Change) -> Result<(), String> {
        let store = match self.store.get_value() {
            Some(store) => store,
            None => {
                let why = self.unavailable.get_untracked().unwrap_or_else(|| "not open yet".into());
                return Err(format!("this browser's storage is not available ({why})"));
            }
        };
        store.write(&change).await
    }

    /// Stores `ratings` (kept in `unsaved` until stored): Ok once they are.
    pub(super) async fn store_ratings(
        self,
        ratings: Vec<Rating>,
        done: Vec<String>,
    ) -> Result<(), String> {
        self.unsaved.update(|u| *u = ratings::merge([std::mem::take(u), ratings.clone()]));
        let keys: Vec<String> = ratings.iter().map(Rating::key).collect();
        let change = Change {
            put_ratings: ratings.clone(),
            done_waiting: done.clone(),
            ..Default::default()
        };
        match self.write(change).await {
            Ok(()) => {
                // Another tab's news may have brought a rated answer back while this was written.
                self.waiting.update(|w| w.retain(|x| !done.contains(&x.key())));
                self.unsaved.update(|u| u.retain(|r| !keys.contains(&r.key())));
                self.saved.update(|s| *s = ratings::merge([std::mem::take(s), ratings]));
                if self.unsaved.with_untracked(Vec::is_empty) {
                    self.write_error.set(None);
                }
                Ok(())
            }
            Err(e) => {
                self.write_error.set(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// The queue of answers to rate: stored ones, then those only on this page.
    pub(super) fn queue_first(self) -> Option<ToRate> {
        self.waiting
            .with(|w| w.first().cloned())
            .or_else(|| self.waiting_unsaved.with(|w| w.first().cloned()))
    }

    pub(super) fn queue_len(self) -> usize {
        self.waiting.with(Vec::len) + self.waiting_unsaved.with(Vec::len)
    }

    /// Every rating this page has: stored and not.
    pub(super) fn all_ratings(self) -> Vec<Rating> {
        ratings::merge([self.saved.get_untracked(), self.unsaved.get_untracked()])
    }
}

//! The KV cache: keys and values of every layer, preallocated to a capacity and written in place.
//!
//! Decoding then sees the same shapes at every token (`[B, n_kv, capacity, head_dim]`, attention
//! over the whole capacity with an additive bias that hides the slots not written yet). On a GPU
//! the same compiled kernels serve every token, and nothing is reallocated or copied per token.
//! Capacities are multiples of [`CACHE_BLOCK`]; a cache that runs out grows once, by doubling,
//! with one copy.

use std::sync::Arc;

use burn::prelude::*;

use crate::host_weights::HostWeights;

/// Capacities are multiples of this many positions.
pub const CACHE_BLOCK: usize = 128;

/// Added to attention scores of masked keys (padding, slots not written yet). Finite (not -inf) so
/// that a fully masked row, as a padding query has, yields a finite softmax instead of NaNs that
/// would spread through V.
pub const MASK_BIAS: f32 = -1.0e4;

#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Per layer: keys and values `[B, n_kv, capacity, head_dim]`, zero where nothing is written.
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Positions written (the same for every row: left padding fills a row's first slots).
    len: usize,
    /// Slots allocated per row.
    capacity: usize,
    /// Positions to allocate for at the first write (prompt + tokens to come).
    reserve: usize,
    /// Left padding of each row: its first `pads[r]` slots hold no token. Empty: none.
    pads: Vec<usize>,
    /// Built once per capacity: the slot index of each key `[1, 1, 1, capacity]`, and
    /// [`MASK_BIAS`] on each row's padding slots `[B, 1, 1, capacity]`.
    slots: Option<Tensor<4>>,
    padding_bias: Option<Tensor<4>>,
    /// Each row's padding as a tensor `[B]`, for the decoding kernels.
    #[cfg(feature = "gpu-kernels")]
    pads_tensor: Option<Tensor<1, Int>>,
    /// The weights the CPU decoding step reads on the host, copied once per generation.
    host_weights: Option<Arc<HostWeights>>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: vec![None; n_layers], ..Default::default() }
    }

    /// Allocates room for `positions` at the first write (fewer only cost a later doubling).
    pub fn with_reserve(mut self, positions: usize) -> Self {
        self.reserve = positions;
        self
    }

    /// Row `r`'s first `pads[r]` slots are left padding, never attended to.
    pub fn with_padding(mut self, pads: Vec<usize>) -> Self {
        self.pads = pads;
        self
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated per row (0 before the first write).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A cache whose row `i` is this cache's row `rows[i]` (rows may repeat): lets many
    /// continuations share one computed prefix.
    pub fn select_rows(&self, rows: &[usize]) -> KvCache {
        let pick = |t: &Tensor<4>| {
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(rows.iter().map(|&r| r as i32).collect(), [rows.len()]),
                &t.device(),
            );
            t.clone().select(0, idx)
        };
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.as_ref().map(|(k, v)| (pick(k), pick(v))))
                .collect(),
            pads: if self.pads.is_empty() {
                Vec::new()
            } else {
                rows.iter().map(|&r| self.pads[r]).collect()
            },
            padding_bias: self.padding_bias.as_ref().map(pick),
            slots: self.slots.clone(),
            #[cfg(feature = "gpu-kernels")]
            pads_tensor: None,
            host_weights: self.host_weights.clone(),
            ..*self
        }
    }

    /// Each row's left padding (empty: none).
    pub fn padding(&self) -> &[usize] {
        &self.pads
    }

    /// Number of rows (0 before the first write).
    pub fn rows(&self) -> usize {
        self.layers.iter().flatten().next().map_or(0, |(k, _)| k.dims()[0])
    }

    /// This cache's rows followed by `other`'s, for a request that joins a running batch
    /// (continuous batching). Both end at the same slot: the shorter side gains left padding, so
    /// every row's keys keep their own positions and the padding is masked as usual.
    pub fn join(self, other: KvCache) -> KvCache {
        if self.rows() == 0 {
            return other;
        }
        if other.rows() == 0 {
            return self;
        }
        assert_eq!(self.layers.len(), other.layers.len(), "caches of the same model");
        let len = self.len.max(other.len);
        let capacity = self.capacity.max(other.capacity).max(len.next_multiple_of(CACHE_BLOCK));
        let (shift_a, shift_b) = (len - self.len, len - other.len);
        let pads = |c: &KvCache, shift: usize| -> Vec<usize> {
            (0..c.rows()).map(|r| c.pads.get(r).copied().unwrap_or(0) + shift).collect()
        };
        let mut all_pads = pads(&self, shift_a);
        all_pads.extend(pads(&other, shift_b));
        let layers = self
            .layers
            .into_iter()
            .zip(other.layers)
            .map(|(a, b)| {
                let ((ka, va), (kb, vb)) = (a.expect("written"), b.expect("written"));
                let place = |t: Tensor<4>, used, shift| move_slots(t, used, shift, capacity);
                Some((
                    Tensor::cat(
                        vec![place(ka, self.len, shift_a), place(kb, other.len, shift_b)],
                        0,
                    ),
                    Tensor::cat(
                        vec![place(va, self.len, shift_a), place(vb, other.len, shift_b)],
                        0,
                    ),
                ))
            })
            .collect();
        KvCache {
            layers,
            len,
            capacity,
            reserve: self.reserve.max(other.reserve),
            pads: all_pads,
            host_weights: self.host_weights.or(other.host_weights),
            ..Default::default()
        }
    }

    /// Keeps the given rows (in that order) and drops the left padding they all share, so that a
    /// batch whose oldest rows have left does not keep growing.
    pub fn retain_rows(&self, rows: &[usize]) -> KvCache {
        let mut kept = self.select_rows(rows);
        let shared = (0..rows.len()).map(|r| kept.pads.get(r).copied().unwrap_or(0)).min();
        let Some(shift) = shared.filter(|&s| s > 0) else { return kept };
        let (len, capacity) = (kept.len - shift, kept.capacity);
        for (k, v) in kept.layers.iter_mut().flatten() {
            *k = k.clone().slice(s![.., .., shift..kept.len, ..]);
            *k = move_slots(k.clone(), len, 0, capacity);
            *v = v.clone().slice(s![.., .., shift..kept.len, ..]);
            *v = move_slots(v.clone(), len, 0, capacity);
        }
        kept.pads.iter_mut().for_each(|p| *p -= shift);
        kept.len = len;
        kept.slots = None;
        kept.padding_bias = None;
        kept
    }

    /// Makes room for `t` more positions before a forward pass writes them (every layer writes at
    /// the same offset, so the length advances once, in [`KvCache::advance`]).
    pub(crate) fn prepare(&mut self, t: usize) {
        let needed = self.len + t;
        if self.capacity == 0 {
            self.capacity = needed.max(self.reserve).next_multiple_of(CACHE_BLOCK);
        } else if needed > self.capacity {
            let grown = (self.capacity * 2).max(needed.next_multiple_of(CACHE_BLOCK));
            for (k, v) in self.layers.iter_mut().flatten() {
                *k = extend_slots(k.clone(), grown);
                *v = extend_slots(v.clone(), grown);
            }
            self.capacity = grown;
            self.slots = None;
            self.padding_bias = None;
        }
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Writes this layer's new keys and values `[B, n_kv, t, head_dim]` at the current position
    /// and returns the whole cache `[B, n_kv, capacity, head_dim]`.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, n_kv, t, hd] = k.dims();
        let (start, end) = (self.len, self.len + t);
        // Taken out of the cache, the tensors are uniquely owned and written in place.
        let (ck, cv) = self.layers[layer].take().unwrap_or_else(|| {
            let zeros =
                || Tensor::<4>::zeros([b, n_kv, self.capacity, hd], (&k.device(), k.dtype()));
            (zeros(), zeros())
        });
        let ck = ck.slice_assign(s![.., .., start..end, ..], k);
        let cv = cv.slice_assign(s![.., .., start..end, ..], v);
        self.layers[layer] = Some((ck.clone(), cv.clone()));
        (ck, cv)
    }

    /// The host copies of the model's weights the CPU decoding step reads, made at its first step.
    pub(crate) fn host_weights(&mut self, make: impl FnOnce() -> HostWeights) -> Arc<HostWeights> {
        self.host_weights.get_or_insert_with(|| Arc::new(make())).clone()
    }

    /// This layer's keys and values `[B, n_kv, capacity, hd]`, taken out so that a kernel (or the
    /// CPU decoding step) can write them in place (zeros at the first write); [`KvCache::put`]
    /// gives them back.
    pub(crate) fn take_layer(
        &mut self,
        layer: usize,
        shape: [usize; 3],
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, n_kv, hd] = shape;
        self.layers[layer].take().unwrap_or_else(|| {
            let zeros = || Tensor::<4>::zeros([b, n_kv, self.capacity, hd], device);
            (zeros(), zeros())
        })
    }

    pub(crate) fn put(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) {
        self.layers[layer] = Some((k, v));
    }

    /// Each row's left padding `[B]` (what the decoding kernels mask), built once.
    #[cfg(feature = "gpu-kernels")]
    pub(crate) fn pads_tensor(&mut self, b: usize, device: &Device) -> Tensor<1, Int> {
        let pads = &self.pads;
        self.pads_tensor
            .get_or_insert_with(|| {
                let rows = (0..b).map(|r| pads.get(r).copied().unwrap_or(0) as i32).collect();
                Tensor::from_data(TensorData::new(rows, [b]), device)
            })
            .clone()
    }

    /// The bias `[B, 1, 1, capacity]` for one new query per row at the current position: 0 on the
    /// keys written so far (this token's included), [`MASK_BIAS`] on padding and on unused slots.
    /// Its parts are built once per capacity; per token it is one comparison and one add.
    pub(crate) fn decode_bias(&mut self, b: usize, device: &Device) -> Tensor<4> {
        let cap = self.capacity;
        let slots = self.slots.get_or_insert_with(|| {
            Tensor::<1, Int>::arange(0..cap as i64, device).float().reshape([1, 1, 1, cap])
        });
        let future = slots.clone().greater_elem(self.len as f32).float() * MASK_BIAS;
        let pads = &self.pads;
        let padding = self.padding_bias.get_or_insert_with(|| {
            let bias: Vec<f32> = (0..b)
                .flat_map(|r| {
                    let pad = pads.get(r).copied().unwrap_or(0);
                    (0..cap).map(move |j| if j < pad { MASK_BIAS } else { 0.0 })
                })
                .collect();
            Tensor::from_data(TensorData::new(bias, [b, 1, 1, cap]), device)
        });
        padding.clone() + future
    }
}

/// The first `used` slots of `t` moved to `shift..shift + used` of a `[B, n_kv, capacity, hd]`
/// tensor, zero elsewhere (the slots of `t` past `used` are zero already).
fn move_slots(t: Tensor<4>, used: usize, shift: usize, capacity: usize) -> Tensor<4> {
    let [b, n_kv, cap, hd] = t.dims();
    if shift == 0 {
        return match cap.cmp(&capacity) {
            std::cmp::Ordering::Equal => t,
            std::cmp::Ordering::Less => extend_slots(t, capacity),
            std::cmp::Ordering::Greater => t.slice(s![.., .., 0..capacity, ..]),
        };
    }
    let zeros = Tensor::<4>::zeros([b, n_kv, capacity, hd], (&t.device(), t.dtype()));
    zeros.slice_assign(s![.., .., shift..shift + used, ..], t.slice(s![.., .., 0..used, ..]))
}

/// `[B, n_kv, capacity, hd]` → `[B, n_kv, grown, hd]`, the new slots zero.
fn extend_slots(t: Tensor<4>, grown: usize) -> Tensor<4> {
    let [b, n_kv, cap, hd] = t.dims();
    let zeros = Tensor::<4>::zeros([b, n_kv, grown - cap, hd], (&t.device(), t.dtype()));
    Tensor::cat(vec![t, zeros], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn writes_in_place_grows_by_doubling_and_masks_what_is_not_written() {
        let device = Device::flex();
        let mut cache = KvCache::new(1).with_padding(vec![2, 0]);
        // Two rows, one KV head of width 1: three prompt positions, values 1..=6.
        let k = Tensor::<4>::from_data(
            TensorData::new((1..=6).map(|v| v as f32).collect::<Vec<_>>(), [2, 1, 3, 1]),
            &device,
        );
        cache.prepare(3);
        assert_eq!(cache.capacity(), CACHE_BLOCK);
        let (ck, cv) = cache.write(0, k.clone(), k.clone() * 10.0);
        cache.advance(3);
        assert_eq!(ck.dims(), [2, 1, CACHE_BLOCK, 1]);
        let ck = values(ck);
        assert_eq!(&ck[..4], &[1.0, 2.0, 3.0, 0.0], "written at 0..3, zeros after");
        assert_eq!(&ck[CACHE_BLOCK..CACHE_BLOCK + 4], &[4.0, 5.0, 6.0, 0.0]);
        assert_eq!(values(cv)[2], 30.0);

        // The decode bias for position 3: padding and the slots after it hidden.
        let bias = values(cache.decode_bias(2, &device));
        assert_eq!(&bias[..5], &[MASK_BIAS, MASK_BIAS, 0.0, 0.0, MASK_BIAS]);
        assert_eq!(&bias[CACHE_BLOCK..CACHE_BLOCK + 5], &[0.0, 0.0, 0.0, 0.0, MASK_BIAS]);

        // Past the capacity: one doubling, the written positions kept, the new slots zero.
        cache.prepare(CACHE_BLOCK);
        assert_eq!(cache.capacity(), 2 * CACHE_BLOCK);
        let one = Tensor::<4>::ones([2, 1, CACHE_BLOCK, 1], &device);
        let (ck, _) = cache.write(0, one.clone(), one);
        cache.advance(CACHE_BLOCK);
        let ck = values(ck);
        assert_eq!(ck.len(), 2 * 2 * CACHE_BLOCK);
        assert_eq!(&ck[..4], &[1.0, 2.0, 3.0, 1.0]);
        assert_eq!(ck[3 + CACHE_BLOCK - 1], 1.0);
        assert_eq!(ck[3 + CACHE_BLOCK], 0.0, "slots past the written ones stay zero");
        assert_eq!(cache.len(), 3 + CACHE_BLOCK);

        // Rows selected for continuations keep their padding.
        let picked = cache.select_rows(&[1, 0, 0]);
        assert_eq!(picked.pads, vec![0, 2, 2]);
        assert_eq!(picked.len(), cache.len());
    }

    #[test]
    fn a_reserve_sets_the_first_capacity() {
        let mut cache = KvCache::new(2).with_reserve(300);
        cache.prepare(10);
        assert_eq!(cache.capacity(), 384);
    }
}

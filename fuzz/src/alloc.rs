//! A global allocator that refuses any single allocation over [`MAX_ALLOC`]: installed by the
//! fuzz tests and the AFL harness, it turns a parser that trusts a size field into an abort
//! (a finding) instead of a machine out of memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation any parser may make on bad input (the real base model's largest
/// tensor, dequantized, is 113 MB).
pub const MAX_ALLOC: usize = 1 << 30;

pub struct Bounded;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The largest allocation made so far, in bytes.
pub fn largest_allocation() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

//! A global allocator guard against hostile length prefixes.
//!
//! `kafka-protocol` decodes an array by first reserving capacity for the element count
//! the request claims (`Vec::with_capacity(n)`), before reading any element. A 12-byte
//! request claiming 2^31 elements asks for ~150 GB; the system allocator refuses, and Rust
//! aborts the process on a failed allocation — one client could stop the broker.
//!
//! [`HugeAllocGuard`] serves every allocation of at least [`HUGE`] bytes with an anonymous
//! `mmap(MAP_NORESERVE)`: address space only, no memory and no overcommit charge until
//! pages are touched. The decoder then fails on the missing elements (the frame is at most
//! `socket.request.max.bytes`), drops the vector, and the mapping is unmapped untouched.
//! Legitimate allocations in Keel stay far below [`HUGE`] (frames are capped at 100 MiB by
//! default) and go to the system allocator unchanged.
//!
//! Binaries opt in with
//! `#[global_allocator] static ALLOC: HugeAllocGuard = HugeAllocGuard;`.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily instead of allocated.
pub const HUGE: usize = 1 << 30;

pub struct HugeAllocGuard;

fn is_huge(layout: &Layout) -> bool {
    // mmap returns page-aligned memory; larger alignments go to the system allocator.
    layout.size() >= HUGE && layout.align() <= 4096
}

// SAFETY: small allocations are delegated to `System` unchanged; huge ones are fresh
// anonymous mappings of at least `layout.size()` bytes, page aligned (which satisfies any
// alignment up to 4096, checked in `is_huge`), and unmapped with the same size.
unsafe impl GlobalAlloc for HugeAllocGuard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_huge(&layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping; no memory of ours is involved.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from our mmap of exactly this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: fresh anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is valid for `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the smaller of the two sizes, free the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reservation_costs_nothing_and_round_trips() {
        let guard = HugeAllocGuard;
        let layout = Layout::from_size_align(150 << 30, 8).unwrap();
        // SAFETY: a valid non-zero layout; the block is written within bounds and freed
        // with the same layout.
        unsafe {
            let p = guard.alloc(layout);
            assert!(
                !p.is_null(),
                "a 150 GiB MAP_NORESERVE mapping should be granted"
            );
            p.write(7);
            p.add(4096 * 3).write(9);
            assert_eq!(p.read(), 7);
            let q = guard.realloc(p, layout, 4096 * 4);
            assert_eq!(q.read(), 7);
            assert_eq!(q.add(4096 * 3).read(), 9);
            guard.dealloc(q, Layout::from_size_align(4096 * 4, 8).unwrap());
        }
    }

    #[test]
    fn small_allocations_use_the_system_allocator() {
        let guard = HugeAllocGuard;
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: valid layout, freed with the same layout.
        unsafe {
            let p = guard.alloc_zeroed(layout);
            assert_eq!(p.read(), 0);
            guard.dealloc(p, layout);
        }
    }
}

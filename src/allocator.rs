//! The process's memory allocator: glibc's `malloc`, with every block of [`LARGE`] bytes or more
//! starting on a cache line ([`LINE`] bytes).
//!
//! Why: on AMD Zen 3 and Zen 4 with glibc before 2.39, `memcpy` of 2 KiB and more is `rep movsb`,
//! which runs about 25 times slower when the destination is 1 to 31 bytes past the source modulo
//! 4 KiB (glibc bug 30994; glibc was since changed to choose `rep movsb` less on these CPUs, in
//! a release not checked here: the 2.36 of Debian 12 on this machine has the slow copy). Measured on this project's 2-core EPYC (Zen 4, glibc 2.36): 16 KiB copied at 2–3 GB/s
//! with those distances, 80–100 GB/s with any other. rustls copies every decrypted TLS record out
//! of its read buffer, where the payload starts 5 bytes into the record, into a block it has just
//! allocated, and glibc put that block 16 bytes past the read buffer modulo 4 KiB (in the room
//! the read buffer gave back when it shrank to 4 KiB; with `std::alloc::System` in its place,
//! `a_record_copied_out_of_a_read_buffer_is_never_in_the_slow_band` below finds the distance 11
//! every time): a distance of 11, record after record
//! (a third of the proxy's copies of 8 KiB or more had it, counted with an `LD_PRELOAD`ed
//! `memcpy`). That copy was 8% of the proxy's CPU on a 64 MiB download (`perf`), more than the
//! AES-GCM of the same bytes. With both blocks on 64-byte boundaries the distance is 59 modulo
//! 64, never in the slow band.
//!
//! How: a large block is glibc's `malloc` of its size + [`LINE`] bytes, handed out from the first
//! cache line at least 8 bytes into it, with that distance written in the 8 bytes in front. Not
//! `posix_memalign`, which was tried first: with it the proxy's RSS with 1,000 keep-alive
//! connections went from 29 to 31–32 MiB (glibc splits the padding off each block as a chunk of
//! its own, which likely keeps freed blocks from merging); the extra line is 64 bytes a block.
//!
//! What does not change: which memory is used and returned (glibc's arenas, `malloc_trim`), and
//! blocks under [`LARGE`] bytes, which `memcpy` never copies with `rep movsb`.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// Blocks from this size on start on a cache line (glibc's smallest `rep movsb` size on these
/// CPUs is 2,112 bytes).
pub const LARGE: usize = 2048;

/// A cache line.
pub const LINE: usize = 64;

/// What glibc's `malloc` aligns every block to on x86-64 and aarch64.
const MALLOC_ALIGN: usize = 16;

/// Where a large block's distance from the start of its `malloc` block is written: the bytes
/// right in front of it.
const TAG: usize = std::mem::size_of::<usize>();

/// glibc's malloc, large blocks on cache lines (see the module's text).
pub struct LineAligned;

/// Whether a block of `size` bytes for `align` is a large one (from `malloc` with a line more,
/// see the module's text).
fn large(size: usize, align: usize) -> bool {
    size >= LARGE && align <= LINE
}

/// A block of `size` bytes at a multiple of `align` (a power of two), or null.
fn allocate(size: usize, align: usize) -> *mut u8 {
    if align <= MALLOC_ALIGN && align <= size {
        // SAFETY: malloc has no preconditions; null on failure is what GlobalAlloc returns.
        return unsafe { libc::malloc(size) }.cast();
    }
    let mut out: *mut libc::c_void = ptr::null_mut();
    // posix_memalign wants a power of two that is a multiple of the pointer size.
    let align = align.max(std::mem::size_of::<usize>());
    // SAFETY: `out` is a valid place for the result; `align` is a power of two (Layout's) and a
    // multiple of the pointer size.
    if unsafe { libc::posix_memalign(&mut out, align, size) } != 0 {
        return ptr::null_mut();
    }
    out.cast()
}

/// How far into a `malloc` block at `raw` its large block starts: the first cache line at
/// least [`TAG`] bytes in: 8 to 64 bytes, as `raw` is a multiple of 8 at least (malloc's
/// guarantee; glibc's blocks are multiples of 16, so 16 to 64 there).
fn offset(raw: *mut u8) -> usize {
    let at = raw as usize + TAG;
    at.next_multiple_of(LINE) - raw as usize
}

/// The large block in the `malloc` block `raw` (null stays null), its distance written in front.
fn place(raw: *mut u8) -> *mut u8 {
    if raw.is_null() {
        return raw;
    }
    let off = offset(raw);
    // SAFETY: `raw` holds the block's size + LINE bytes and TAG <= `off` <= LINE, so the block
    // at `raw + off` and the TAG bytes in front of it (from `raw + off - TAG` >= `raw`) are
    // inside it.
    unsafe {
        let block = raw.add(off);
        block.sub(TAG).cast::<usize>().write_unaligned(off);
        block
    }
}

/// The `malloc` block a large block is in, and the block's distance from its start.
///
/// # Safety
/// `block` is a large block from [`place`], still allocated.
unsafe fn unplace(block: *mut u8) -> (*mut u8, usize) {
    // SAFETY: `place` wrote the distance in the TAG bytes in front of the block, inside the
    // malloc block (the caller's promise).
    unsafe {
        let off = block.sub(TAG).cast::<usize>().read_unaligned();
        (block.sub(off), off)
    }
}

// SAFETY: a block of a layout that `large` accepts is `place` in a malloc block of its size +
// LINE bytes, on a cache line (so aligned for any `align` <= LINE), and is freed or resized
// through that malloc block; any other block comes from malloc, posix_memalign or realloc at a
// multiple of its alignment and is released with free or realloc, which accept all three. Which
// kind a block is follows from its layout alone, which GlobalAlloc's callers pass back unchanged.
unsafe impl GlobalAlloc for LineAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(layout.size(), layout.align()) {
            let Some(size) = layout.size().checked_add(LINE) else {
                return ptr::null_mut();
            };
            // SAFETY: malloc has no preconditions.
            return place(unsafe { libc::malloc(size) }.cast());
        }
        allocate(layout.size(), layout.align())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if large(size, align) {
            let Some(size) = size.checked_add(LINE) else {
                return ptr::null_mut();
            };
            // SAFETY: calloc has no preconditions and returns zeroed memory or null; `place`
            // writes only in front of the block.
            return place(unsafe { libc::calloc(size, 1) }.cast());
        }
        if align <= MALLOC_ALIGN && align <= size {
            // SAFETY: as above.
            return unsafe { libc::calloc(size, 1) }.cast();
        }
        let p = allocate(size, align);
        if !p.is_null() {
            // SAFETY: `p` is a fresh block of `size` writable bytes.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        p
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if large(layout.size(), layout.align()) {
            // SAFETY: a large layout's block came from `place` (GlobalAlloc's contract: the
            // caller passes the layout it was allocated with).
            let (raw, _) = unsafe { unplace(block) };
            // SAFETY: `raw` is the malloc block, freed once.
            return unsafe { libc::free(raw.cast()) };
        }
        // SAFETY: the block came from malloc, posix_memalign or realloc (as above).
        unsafe { libc::free(block.cast()) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let (was, is) = (large(layout.size(), align), large(new_size, align));
        let keep = layout.size().min(new_size);
        if was && is {
            let Some(size) = new_size.checked_add(LINE) else {
                return ptr::null_mut();
            };
            // SAFETY: the block came from `place` (its layout is large).
            let (raw, off) = unsafe { unplace(block) };
            // SAFETY: `raw` is the malloc block; on failure it is left as it was.
            let moved: *mut u8 = unsafe { libc::realloc(raw.cast(), size) }.cast();
            if moved.is_null() {
                return moved;
            }
            // The data is at the old distance into the moved block; the line may be elsewhere.
            let to = offset(moved);
            // SAFETY: both ranges, `keep` bytes from `off` and from `to` (each <= LINE), lie in
            // the moved block of new_size + LINE bytes; `copy` allows them to overlap. The TAG is
            // written after the data has moved.
            unsafe {
                if to != off {
                    ptr::copy(moved.add(off), moved.add(to), keep);
                }
                return place(moved);
            }
        }
        if !was && !is && align <= MALLOC_ALIGN && align <= new_size {
            // SAFETY: the block came from malloc, posix_memalign or realloc; `new_size` is
            // non-zero (the contract). On failure the old block is left as it was.
            return unsafe { libc::realloc(block.cast(), new_size) }.cast();
        }
        // Across the size of a large block, or an alignment realloc does not keep: by hand.
        // SAFETY: `align` and `new_size` form a valid layout (GlobalAlloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        // SAFETY: a non-zero size (the contract).
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks hold at least `keep` bytes and are distinct; the old one was
            // allocated with `layout` and is not used again.
            unsafe {
                ptr::copy_nonoverlapping(block, moved, keep);
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The alignment a block of `size` bytes for `align` must have.
    fn want(size: usize, align: usize) -> usize {
        if size >= LARGE {
            align.max(LINE)
        } else {
            align
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn fill(p: *mut u8, n: usize, seed: u8) {
        for i in 0..n {
            // SAFETY: `p` is a live block of at least `n` bytes (the callers' allocations).
            unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
        }
    }

    fn holds(p: *const u8, n: usize, seed: u8) -> bool {
        // SAFETY: as in `fill`.
        (0..n).all(|i| unsafe { p.add(i).read() } == seed.wrapping_add(i as u8))
    }

    #[test]
    fn large_blocks_start_on_a_cache_line_and_small_ones_are_mallocs() {
        let a = LineAligned;
        let mut off_line = 0;
        let mut blocks = Vec::new();
        for size in [LARGE, 4096, 16_384, 16_406, 18_437, 1 << 20] {
            for _ in 0..16 {
                let l = layout(size, 1);
                // SAFETY: non-zero size; freed below with the same layout.
                let p = unsafe { a.alloc(l) };
                assert!(!p.is_null());
                assert_eq!(p as usize % LINE, 0, "{size} bytes at {p:p}");
                blocks.push((p, l));
            }
        }
        for size in [1, 24, 100, 2047] {
            for _ in 0..16 {
                let l = layout(size, 1);
                // SAFETY: as above.
                let p = unsafe { a.alloc(l) };
                assert_eq!(p as usize % MALLOC_ALIGN, 0);
                off_line += usize::from(!(p as usize).is_multiple_of(LINE));
                blocks.push((p, l));
            }
        }
        // Small blocks are left where malloc puts them (most of them off a cache line).
        assert!(off_line > 0, "small blocks were aligned too");
        for (p, l) in blocks {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { a.dealloc(p, l) };
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_and_over_aligned_layouts_are_kept() {
        let a = LineAligned;
        for (size, align) in [(8, 8), (100, 128), (LARGE, 1), (5000, 4096), (3, 1)] {
            let l = layout(size, align);
            // SAFETY: non-zero size; freed below.
            let p = unsafe { a.alloc_zeroed(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % want(size, align), 0);
            // SAFETY: `p` holds `size` bytes.
            assert!((0..size).all(|i| unsafe { p.add(i).read() } == 0));
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) };
        }
    }

    #[test]
    fn a_read_buffer_growing_and_shrinking_keeps_its_bytes_and_its_line() {
        // rustls's read buffer: 4 KiB steps up to a record and more, then back to 4 KiB.
        let a = LineAligned;
        let mut l = layout(4096, 1);
        // SAFETY: non-zero size.
        let mut p = unsafe { a.alloc(l) };
        fill(p, 4096, 7);
        for size in [8192, 12_288, 16_384, 18_437, 4096, 100, 3000, 18_437] {
            let keep = l.size().min(size).min(100);
            // SAFETY: `p` was allocated with `l`; `size` is non-zero.
            p = unsafe { a.realloc(p, l, size) };
            assert!(!p.is_null());
            assert!(holds(p, keep, 7), "bytes lost growing to {size}");
            if size >= LARGE {
                assert_eq!(p as usize % LINE, 0, "{size} bytes at {p:p}");
            }
            l = layout(size, 1);
            fill(p, size, 7);
        }
        // SAFETY: allocated with `l`.
        unsafe { a.dealloc(p, l) };
    }

    #[test]
    fn a_record_copied_out_of_a_read_buffer_is_never_in_the_slow_band() {
        // rustls: a read buffer grown to a record, shrunk to 4 KiB once emptied, and a block
        // for each record's payload (at +5 in the buffer). With glibc's own placement the copy's
        // distance was 11 modulo 4 KiB (see the module's text).
        let a = LineAligned;
        let mut held = Vec::new();
        for _ in 0..32 {
            let big = layout(18_437, 1);
            // SAFETY: non-zero sizes; each block is resized or freed once, with its layout.
            unsafe {
                let buffer = a.alloc(big);
                let buffer = a.realloc(buffer, big, 4096);
                let payload = a.alloc(layout(16_384, 1));
                let distance = (payload as usize).wrapping_sub(buffer as usize + 5) % 4096;
                assert!(distance >= 32, "copy distance {distance} modulo 4 KiB");
                assert_eq!(distance % LINE, LINE - 5);
                held.push((buffer, layout(4096, 1)));
                held.push((payload, layout(16_384, 1)));
            }
        }
        for (p, l) in held {
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) };
        }
    }

    proptest! {
        /// Any run of allocations, resizes and frees: every block keeps its bytes, has its
        /// layout's alignment, and is on a cache line when large.
        #[test]
        fn blocks_keep_their_bytes_and_alignment(
            steps in proptest::collection::vec((0usize..8, 1usize..40_000, 0u32..8), 1..60)
        ) {
            let a = LineAligned;
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            for (i, (slot, size, align_log)) in steps.into_iter().enumerate() {
                let align = 1usize << align_log;
                let seed = i as u8;
                if slot < live.len() && slot % 2 == 0 {
                    let (p, l, s) = live.swap_remove(slot);
                    prop_assert!(holds(p, l.size(), s));
                    // SAFETY: `p` is live and was allocated with `l`; `size` is non-zero.
                    let q = unsafe { a.realloc(p, l, size) };
                    prop_assert!(!q.is_null());
                    prop_assert!(holds(q, l.size().min(size), s));
                    prop_assert_eq!(q as usize % want(size, l.align()), 0);
                    let l = layout(size, l.align());
                    fill(q, size, seed);
                    live.push((q, l, seed));
                } else if slot < live.len() {
                    let (p, l, s) = live.swap_remove(slot);
                    prop_assert!(holds(p, l.size(), s));
                    // SAFETY: live, allocated with `l`, freed once.
                    unsafe { a.dealloc(p, l) };
                } else {
                    let l = layout(size, align);
                    // SAFETY: non-zero size.
                    let p = unsafe { a.alloc(l) };
                    prop_assert!(!p.is_null());
                    prop_assert_eq!(p as usize % want(size, align), 0);
                    fill(p, size, seed);
                    live.push((p, l, seed));
                }
            }
            for (p, l, s) in live {
                prop_assert!(holds(p, l.size(), s));
                // SAFETY: live, allocated with `l`.
                unsafe { a.dealloc(p, l) };
            }
        }
    }
}

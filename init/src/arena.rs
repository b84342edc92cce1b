//! init's memory allocator: a bump arena for boot, glibc's malloc after.
//!
//! Between exec and the agent's start init allocates about 250 times (the
//! command line's words, the units' strings and vectors, the spawn plan) on
//! a heap that has never freed anything, where glibc's malloc takes 100–150
//! instructions a call (no cached chunk to reuse: every call searches the
//! bins, then cuts the top chunk), and free about 60. Those are guest
//! microseconds before the agent runs. Here a call is a bounds check and an
//! add.
//!
//! Blocks come from a fixed buffer in `.bss` (only the pages used are ever
//! touched), one after another. Freeing the last block handed out takes it
//! back, so a vector or string that grows is extended in place and a
//! temporary freed before the next allocation costs nothing; any other block
//! freed stays in the arena unused (boot's allocations are few and small,
//! and most live as long as init). Blocks larger than [`MAX_BLOCK`], every
//! allocation once the arena is full, and every allocation after
//! [`close`] (init calls it once the agent has run) go to glibc's malloc; a
//! block of the arena freed or grown after that is left where it is or
//! copied out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Size of init's boot arena: what boot allocates, with room to spare (the
/// pages beyond what is used are never touched).
pub const BOOT_ARENA_SIZE: usize = 48 * 1024;

/// Larger requests go to glibc (the spawn helper's 64 KiB stack, whole files).
pub const MAX_BLOCK: usize = 4096;

/// A bump allocator over `N` bytes, in front of glibc's malloc.
pub struct Arena<const N: usize> {
    buf: UnsafeCell<Buffer<N>>,
    /// Offset of the first free byte.
    next: AtomicUsize,
    /// Zero (open) at first, like all of it: a `static` arena takes no
    /// room in the file, only in `.bss`.
    closed: AtomicBool,
}

impl<const N: usize> std::fmt::Debug for Arena<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("size", &N)
            .field("used", &self.used())
            .field("closed", &self.closed.load(Relaxed))
            .finish()
    }
}

#[repr(C, align(16))]
struct Buffer<const N: usize>([u8; N]);

// SAFETY: the buffer is only handed out in disjoint blocks, each reserved by
// a compare-and-swap on `next`; nothing else reads or writes it.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    /// An empty, open arena (all zeros: a `static` one lives in `.bss`).
    pub const fn new() -> Self {
        Self {
            buf: UnsafeCell::new(Buffer([0; N])),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// From now on every allocation goes to glibc's malloc.
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
    }

    /// Bytes handed out so far (freed blocks included, but the last ones
    /// taken back).
    pub fn used(&self) -> usize {
        self.next.load(Relaxed)
    }

    fn base(&self) -> usize {
        self.buf.get() as usize
    }

    /// The offset of `ptr` in the arena, if it is one of its blocks.
    fn offset_of(&self, ptr: *mut u8) -> Option<usize> {
        (ptr as usize)
            .checked_sub(self.base())
            .filter(|&offset| offset < N)
    }

    /// A block of the arena, or null (full, closed, or too large).
    fn bump(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_BLOCK || self.closed.load(Relaxed) {
            return std::ptr::null_mut();
        }
        let base = self.base();
        let mut current = self.next.load(Relaxed);
        loop {
            // Layout alignments are powers of two.
            let mask = layout.align() - 1;
            let Some(start) = (base + current)
                .checked_add(mask)
                .map(|a| (a & !mask) - base)
            else {
                return std::ptr::null_mut();
            };
            let end = match start.checked_add(layout.size()) {
                Some(end) if end <= N => end,
                _ => return std::ptr::null_mut(),
            };
            match self
                .next
                .compare_exchange_weak(current, end, Relaxed, Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => current = now,
            }
        }
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks are disjoint and aligned as asked (see `bump`); a block is
// taken back only when it is the last one and its owner frees it; anything
// not from the arena is passed to glibc with the layout it was made with.
unsafe impl<const N: usize> GlobalAlloc for Arena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let block = self.bump(layout);
        if !block.is_null() {
            return block;
        }
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset_of(ptr) {
            Some(offset) => {
                // The last block is taken back; any other stays unused.
                let _ =
                    self.next
                        .compare_exchange(offset + layout.size(), offset, Relaxed, Relaxed);
            }
            // SAFETY: a block glibc made, with its layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(offset) = self.offset_of(ptr) else {
            // SAFETY: a block glibc made, with its layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        // The last block grows or shrinks in place while there is room.
        if !self.closed.load(Relaxed) && new_size <= MAX_BLOCK && offset + new_size <= N {
            let end = offset + layout.size();
            if self
                .next
                .compare_exchange(end, offset + new_size, Relaxed, Relaxed)
                .is_ok()
            {
                return ptr;
            }
        }
        if new_size <= layout.size() {
            // Shrunk where it is: the block keeps its room.
            return ptr;
        }
        // SAFETY: the alignment is the block's own, valid as it was made;
        // `new_size` is non-zero and fits isize as GlobalAlloc promises.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for alloc.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for the old size and disjoint
            // (the new one is past the arena's end or glibc's).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}

/// The arena init's allocator takes boot's blocks from.
pub static BOOT: Arena<BOOT_ARENA_SIZE> = Arena::new();

/// init's global allocator (installed by the `init` binary): [`BOOT`], then
/// glibc's malloc.
#[derive(Debug)]
pub struct BootAlloc;

// SAFETY: delegates to BOOT, a GlobalAlloc.
unsafe impl GlobalAlloc for BootAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { BOOT.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { BOOT.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe { BOOT.realloc(ptr, layout, new_size) }
    }
}

/// Ends boot's arena: later allocations are glibc's, whose freed memory is
/// reused (init runs as long as the VM).
pub fn close() {
    BOOT.close();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_the_last_is_taken_back() {
        let arena: Box<Arena<1024>> = Box::default();
        let a = &*arena;
        // SAFETY: every block is used within its layout and freed with it.
        unsafe {
            let x = a.alloc(layout(3, 1));
            let y = a.alloc(layout(8, 8));
            assert_eq!(a.offset_of(x), Some(0));
            assert_eq!(y as usize % 8, 0);
            assert_eq!(a.offset_of(y), Some(8));
            assert_eq!(a.used(), 16);
            std::ptr::write_bytes(x, 0xaa, 3);
            std::ptr::write_bytes(y, 0xbb, 8);
            // Not the last: stays.
            a.dealloc(x, layout(3, 1));
            assert_eq!(a.used(), 16);
            // The last: taken back, and handed out again.
            a.dealloc(y, layout(8, 8));
            assert_eq!(a.used(), 8);
            let z = a.alloc(layout(64, 64));
            assert_eq!(z as usize % 64, 0);
            assert_eq!(*x, 0xaa, "an earlier block is never overwritten");
        }
    }

    #[test]
    fn the_last_block_grows_in_place_others_move_with_their_bytes() {
        let arena: Box<Arena<1024>> = Box::default();
        let a = &*arena;
        // SAFETY: every block is used within its layout and freed with it.
        unsafe {
            let v = a.alloc(layout(4, 1));
            std::ptr::copy_nonoverlapping(b"abcd".as_ptr(), v, 4);
            let grown = a.realloc(v, layout(4, 1), 100);
            assert_eq!(grown, v, "in place");
            assert_eq!(a.used(), 100);
            let w = a.alloc(layout(4, 1));
            let moved = a.realloc(v, layout(100, 1), 200);
            assert_ne!(moved, v);
            assert!(a.offset_of(moved).is_some(), "still in the arena");
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
            // Shrinking never moves.
            assert_eq!(a.realloc(w, layout(4, 1), 2), w);
        }
    }

    #[test]
    fn full_closed_or_large_requests_go_to_glibc_and_come_back_to_it() {
        let arena: Box<Arena<256>> = Box::default();
        let a = &*arena;
        // SAFETY: every block is used within its layout and freed with it.
        unsafe {
            let big = a.alloc(layout(MAX_BLOCK + 1, 8));
            assert!(!big.is_null() && a.offset_of(big).is_none());
            a.dealloc(big, layout(MAX_BLOCK + 1, 8));
            let fill = a.alloc(layout(200, 1));
            assert!(a.offset_of(fill).is_some());
            let over = a.alloc(layout(100, 1));
            assert!(!over.is_null() && a.offset_of(over).is_none(), "full");
            // Growing past the end moves the block out, bytes and all.
            std::ptr::write_bytes(fill, 7, 200);
            let out = a.realloc(fill, layout(200, 1), 300);
            assert!(a.offset_of(out).is_none());
            assert!(std::slice::from_raw_parts(out, 200).iter().all(|&b| b == 7));
            a.dealloc(out, layout(300, 1));
            a.dealloc(over, layout(100, 1));
            // Taken back when moved out (it was the last): room again.
            assert_eq!(a.used(), 0);
            a.close();
            let after = a.alloc(layout(8, 8));
            assert!(!after.is_null() && a.offset_of(after).is_none(), "closed");
            a.dealloc(after, layout(8, 8));
        }
    }

    #[test]
    fn a_vector_and_a_string_work_on_it() {
        // Through the GlobalAlloc interface as Rust's collections use it.
        let arena: Box<Arena<4096>> = Box::default();
        let a = &*arena;
        // SAFETY: every block is used within its layout and freed with it.
        unsafe {
            let mut cap = 1;
            let mut p = a.alloc(layout(cap * 4, 4)) as *mut u32;
            for i in 0..300u32 {
                if i as usize == cap {
                    p = a.realloc(p.cast(), layout(cap * 4, 4), cap * 8) as *mut u32;
                    cap *= 2;
                }
                p.add(i as usize).write(i);
            }
            assert!((0..300u32).all(|i| *p.add(i as usize) == i));
            a.dealloc(p.cast(), layout(cap * 4, 4));
            assert_eq!(a.used(), 0, "grown in place throughout, then taken back");
        }
    }
}

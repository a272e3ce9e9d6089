//! Memory of the parent's own: pages a forked child gets back zero-filled, so
//! what the parent writes there after a fork copies no page for any child.
//!
//! After `fork(2)` parent and child share every page until one of them writes
//! it. A page the parent writes between two forks (the registry entry of the
//! child just forked, the text read before the next fork) thus becomes a
//! private copy in every child still alive: one more page of memory per held
//! connection. Kept in these pages instead, it costs children nothing.

use std::io;
use std::ptr::{self, NonNull};

use nix::libc;

/// Anonymous memory that a forked child gets back zero-filled
/// (`MADV_WIPEONFORK`, Linux 4.14). Where the kernel lacks the flag the pages
/// are ordinary ones, shared with children until written: only a cost, never
/// a difference in what either side reads.
pub(crate) struct ParentPages {
    start: NonNull<u8>,
    len: usize,
    /// The kernel took `MADV_WIPEONFORK`.
    wiped: bool,
}

impl ParentPages {
    /// Maps `len` bytes (at least one; the kernel rounds up to whole pages),
    /// zero-filled.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1);
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks; no existing memory is affected.
        let start = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `start..start + len` is the mapping just made, owned here.
        // A failure (an older kernel) only leaves the pages ordinary.
        let wiped = unsafe { libc::madvise(start, len, libc::MADV_WIPEONFORK) } == 0;
        let start = NonNull::new(start.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { start, len, wiped })
    }

    /// Whether a forked child gets these pages zero-filled (the kernel took
    /// `MADV_WIPEONFORK`), rather than a copy.
    #[cfg(test)]
    pub(crate) fn wiped_in_children(&self) -> bool {
        self.wiped
    }

    /// The start of the pages: page-aligned, `len` bytes readable and
    /// writable for as long as `self` lives.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.start.as_ptr()
    }

    /// Whether the first byte is zero: in a child that got the pages
    /// zero-filled, always.
    pub(crate) fn starts_with_zero(&self) -> bool {
        // SAFETY: the mapping is at least one byte, readable, and
        // initialized (zero-filled by the kernel, or written since).
        unsafe { self.start.as_ptr().read() == 0 }
    }

    /// The pages as bytes.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `start` is a readable and writable mapping of `len` bytes
        // owned by `self` alone, initialized (zero-filled by the kernel, or
        // written since); `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len) }
    }
}

impl Drop for ParentPages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no borrow outlives
        // `self` (`as_mut_slice` borrows it, and users of `as_ptr` stop before
        // dropping it).
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for ParentPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentPages")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("wiped", &self.wiped)
            .finish()
    }
}

// SAFETY: `ParentPages` owns its mapping exclusively, like a `Box<[u8]>`: it
// may move to another thread, and `&ParentPages` gives no access to the bytes.
unsafe impl Send for ParentPages {}
// SAFETY: as above; shared references only read the address and length.
unsafe impl Sync for ParentPages {}

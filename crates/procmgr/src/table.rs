//! The storage of the [`Children`](crate::Children) registry: a hash table of
//! pids (open addressing, linear probing, backward-shift deletion) kept in
//! [`ParentPages`].
//!
//! Every fork is followed by an insert. In ordinary heap memory that insert
//! writes a page the new child still shares, and the child is left with a
//! private copy of it: one page of memory per held connection. Here the
//! parent's writes copy nothing, and a forked child finds the pages
//! zero-filled, which this layout reads as an empty table (pid 0 marks an
//! empty slot, and the entry count is in the pages too): a child has no
//! children of its own, and can neither signal nor reap its parent's through
//! the registry.

use std::alloc::{Layout, handle_alloc_error};
use std::marker::PhantomData;
use std::mem::{MaybeUninit, align_of, size_of};
use std::ptr;

use crate::ChildPid;
use crate::pages::ParentPages;

/// One slot: a pid (0 when empty) and, when full, its value.
#[repr(C)]
struct Slot<T> {
    pid: i32,
    info: MaybeUninit<T>,
}

/// A map from live child pids to the caller's data.
pub(crate) struct PidTable<T> {
    /// The entry count (a `usize`), then `capacity` slots; `None` until the
    /// first insert.
    pages: Option<ParentPages>,
    /// How many slots: a power of two, or 0 without pages. At most half are
    /// full, so every probe ends at an empty slot.
    capacity: usize,
    /// The table owns its values.
    owns: PhantomData<T>,
}

impl<T> PidTable<T> {
    /// Where the slots start in the pages: after the count, aligned.
    const SLOTS_AT: usize = size_of::<usize>().next_multiple_of(align_of::<Slot<T>>());

    /// An empty table; maps nothing until the first insert.
    pub(crate) const fn new() -> Self {
        Self { pages: None, capacity: 0, owns: PhantomData }
    }

    /// How many entries.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the pages start with the count, a `usize` (page-aligned).
        self.pages.as_ref().map_or(0, |pages| unsafe { *pages.as_ptr().cast::<usize>() })
    }

    fn set_len(&mut self, len: usize) {
        if let Some(pages) = &self.pages {
            // SAFETY: as in `len`; `&mut self` makes the write exclusive.
            unsafe { *pages.as_ptr().cast::<usize>() = len };
        }
    }

    /// Slot `i`, for `i < capacity` (pages mapped): within the pages, which
    /// hold `SLOTS_AT + capacity * size_of::<Slot<T>>()` bytes (see `grow`),
    /// aligned (`SLOTS_AT` is a multiple of the slot's alignment, and the
    /// pages are page-aligned, asserted in `grow` to be enough).
    fn slot(&self, i: usize) -> *mut Slot<T> {
        debug_assert!(i < self.capacity);
        let pages = self.pages.as_ref().expect("a table with slots has pages");
        pages.as_ptr().wrapping_add(Self::SLOTS_AT).cast::<Slot<T>>().wrapping_add(i)
    }

    /// The pid of slot `i` (the slot is `repr(C)` with the pid first).
    fn pid_ptr(&self, i: usize) -> *mut i32 {
        self.slot(i).cast::<i32>()
    }

    /// The value of slot `i`, initialized only if the slot is full.
    fn info(&self, i: usize) -> *mut T {
        self.slot(i).cast::<u8>().wrapping_add(std::mem::offset_of!(Slot<T>, info)).cast::<T>()
    }

    /// The pid in slot `i`; 0 if empty.
    fn pid_at(&self, i: usize) -> i32 {
        // SAFETY: `pid_ptr` is in bounds and aligned, and the pid is always
        // initialized (zero-filled pages, or written since).
        unsafe { self.pid_ptr(i).read() }
    }

    /// Where a pid's probe starts: the top bits of the pid times 2^32 / φ
    /// (Fibonacci hashing), which spreads consecutive pids and pids a
    /// multiple of the capacity apart alike.
    fn home(&self, pid: i32) -> usize {
        // At most 31: a table never nears 2^31 slots (pids stop at 2^22).
        let bits = self.capacity.trailing_zeros().min(31);
        ((pid as u32).wrapping_mul(0x9E37_79B9) >> (32 - bits)) as usize
    }

    /// The slot holding `pid`.
    fn find(&self, pid: ChildPid) -> Option<usize> {
        if self.capacity == 0 {
            return None;
        }
        let pid = pid.as_raw();
        let mut i = self.home(pid);
        loop {
            match self.pid_at(i) {
                0 => return None,
                found if found == pid => return Some(i),
                _ => i = (i + 1) & (self.capacity - 1),
            }
        }
    }

    /// The value for `pid`.
    pub(crate) fn get(&self, pid: ChildPid) -> Option<&T> {
        let i = self.find(pid)?;
        // SAFETY: slot `i` is full, so its value is initialized; the borrow
        // of `self` keeps it alive and unchanged.
        Some(unsafe { &*self.info(i) })
    }

    /// The value for `pid`, to change it.
    pub(crate) fn get_mut(&mut self, pid: ChildPid) -> Option<&mut T> {
        let i = self.find(pid)?;
        // SAFETY: as in `get`; `&mut self` makes the borrow exclusive.
        Some(unsafe { &mut *self.info(i) })
    }

    /// Inserts or replaces the value for `pid`; returns the replaced one.
    pub(crate) fn insert(&mut self, pid: ChildPid, info: T) -> Option<T> {
        if let Some(i) = self.find(pid) {
            // SAFETY: slot `i` is full; the old value is moved out and the new
            // one written in its place.
            return Some(unsafe { ptr::replace(self.info(i), info) });
        }
        if (self.len() + 1) * 2 > self.capacity {
            self.grow();
        }
        let len = self.len();
        self.put(pid.as_raw(), info);
        self.set_len(len + 1);
        None
    }

    /// Writes an entry into the first empty slot of its probe (the pid is
    /// known to be absent, and an empty slot to exist).
    fn put(&mut self, pid: i32, info: T) {
        let mut i = self.home(pid);
        while self.pid_at(i) != 0 {
            i = (i + 1) & (self.capacity - 1);
        }
        // SAFETY: slot `i` is in bounds and empty: writing a whole slot
        // overwrites no value.
        unsafe { self.slot(i).write(Slot { pid, info: MaybeUninit::new(info) }) };
    }

    /// Doubles the slots (the first time: about a page's worth), moving
    /// every entry over. Where the pages cannot be mapped (out of memory,
    /// or the process's mapping count at `vm.max_map_count`) the process
    /// aborts, as on any failed allocation.
    fn grow(&mut self) {
        let first = (4096 / size_of::<Slot<T>>()).next_power_of_two().max(2);
        let capacity = (self.capacity * 2).max(first);
        let bytes = capacity
            .checked_mul(size_of::<Slot<T>>())
            .and_then(|slots| slots.checked_add(Self::SLOTS_AT))
            .expect("the child registry fits in memory");
        assert!(align_of::<Slot<T>>() <= 4096, "a child's data is aligned to at most a page");
        let pages = ParentPages::new(bytes).unwrap_or_else(|_| {
            handle_alloc_error(Layout::from_size_align(bytes, 4096).expect("a valid layout"))
        });
        let new = Self { pages: Some(pages), capacity, owns: PhantomData };
        // The old table's values move to the new one: it must never drop them.
        let mut old = std::mem::ManuallyDrop::new(std::mem::replace(self, new));
        for i in 0..old.capacity {
            let pid = old.pid_at(i);
            if pid != 0 {
                // SAFETY: slot `i` of the old table is full; its value moves to
                // the new table, and the old table is never dropped.
                let info = unsafe { old.info(i).read() };
                self.put(pid, info);
            }
        }
        self.set_len(old.len());
        // Unmaps the old pages; nothing in them is dropped.
        drop(old.pages.take());
    }

    /// Removes `pid`'s entry; returns its value.
    pub(crate) fn remove(&mut self, pid: ChildPid) -> Option<T> {
        let found = self.find(pid)?;
        // SAFETY: slot `found` is full; its value moves out, and the slot is
        // then refilled by a shifted entry or marked empty.
        let info = unsafe { self.info(found).read() };
        // Backward shift: pull later entries of the same run into the hole
        // when it lies on their probe path, so no probe meets a false end.
        let mask = self.capacity - 1;
        let (mut hole, mut next) = (found, found);
        loop {
            next = (next + 1) & mask;
            let pid = self.pid_at(next);
            if pid == 0 {
                break;
            }
            let from_home = next.wrapping_sub(self.home(pid)) & mask;
            let from_hole = next.wrapping_sub(hole) & mask;
            if from_home >= from_hole {
                // SAFETY: both slots are in bounds and distinct; the hole's
                // value was moved out, so overwriting it drops nothing, and
                // `next` becomes the hole.
                unsafe { ptr::copy_nonoverlapping(self.slot(next), self.slot(hole), 1) };
                hole = next;
            }
        }
        // SAFETY: the hole's value was moved out or copied elsewhere.
        unsafe { self.pid_ptr(hole).write(0) };
        let len = self.len();
        self.set_len(len - 1);
        Some(info)
    }

    /// The entries, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ChildPid, &T)> + '_ {
        (0..self.capacity).filter_map(move |i| {
            let pid = ChildPid::from_raw(self.pid_at(i))?;
            // SAFETY: the slot is full; the borrow of `self` keeps it alive.
            Some((pid, unsafe { &*self.info(i) }))
        })
    }

    /// The entries, to change their values, in slot order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (ChildPid, &mut T)> + '_ {
        let this = &*self;
        (0..this.capacity).filter_map(move |i| {
            let pid = ChildPid::from_raw(this.pid_at(i))?;
            // SAFETY: the slot is full; each index is yielded once, so the
            // mutable borrows are disjoint, and they live no longer than the
            // exclusive borrow of the table this iterator holds.
            Some((pid, unsafe { &mut *this.info(i) }))
        })
    }
}

impl<T> Drop for PidTable<T> {
    fn drop(&mut self) {
        if std::mem::needs_drop::<T>() {
            for i in 0..self.capacity {
                if self.pid_at(i) != 0 {
                    // SAFETY: the slot is full, and its value is dropped once:
                    // the table is going away.
                    unsafe { ptr::drop_in_place(self.info(i)) };
                }
            }
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for PidTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

// SAFETY: the table owns its values as a `HashMap` does, in memory no other
// object refers to: sending it sends the values.
unsafe impl<T: Send> Send for PidTable<T> {}
// SAFETY: shared references give only shared access to the values.
unsafe impl<T: Sync> Sync for PidTable<T> {}

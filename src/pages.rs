//! Memory of whole pages, mapped for one image alone (`mmap` of private anonymous memory).
//!
//! Why not the heap: `malloc` writes its bookkeeping just before the block it returns, so a
//! block of whole pages always spills into one page more. musl's malloc (mallocng) does so
//! for most blocks of a few KiB and more, and rounds them to its size classes, and glibc's
//! does so from 128 KiB up, where it maps blocks itself: 1,000 images of 64 KiB cost 17
//! pages each on musl instead of 16, 3.9 MiB more. A mapping of our own holds `len` bytes
//! in `ceil(len / page)` pages and nothing else. The catalog decides which images are worth
//! one ([`crate::catalog::ImageBytes`]).
//!
//! The crate denies unsafe code; its `mod pages` declaration alone allows it here, and
//! every unsafe block says why it is sound.

use std::io;
use std::ptr::NonNull;

/// `len` bytes (at least 1) at the start of a private anonymous mapping of whole pages,
/// owned alone and unmapped when dropped.
pub(crate) struct Pages {
    /// Start of the mapping: page-aligned, never null.
    start: NonNull<u8>,
    /// Bytes usable, `1..=mapped`.
    len: usize,
    /// Bytes mapped: `len` rounded up to whole pages.
    mapped: usize,
}

// SAFETY: `Pages` owns its mapping alone (no other value holds the pointer) and only
// hands it out through `&self` (shared, read-only) or `&mut self` (exclusive) borrows, as
// a `Box<[u8]>` does; the memory itself is ordinary process memory, usable from any thread.
unsafe impl Send for Pages {}
// SAFETY: as above: through `&Pages` the bytes can only be read.
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` zero bytes in a new mapping of `len` rounded up to whole pages.
    ///
    /// # Errors
    /// `InvalidInput` for `len == 0` or a length that overflows when rounded up to a page;
    /// as `mmap` otherwise (`ENOMEM` when the memory or the address space runs out).
    pub(crate) fn zeroed(len: usize) -> io::Result<Pages> {
        let mapped = len
            .checked_next_multiple_of(page_size())
            .filter(|&mapped| len > 0 && mapped <= isize::MAX as usize)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a new private anonymous mapping (no file, no fixed address) touches no
        // existing memory; the kernel fills it with zeros. The result is checked below.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = NonNull::new(start.cast::<u8>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Pages { start, len, mapped })
    }

    /// The `len` bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `start` points to `mapped >= len` readable, initialised (zero-filled or
        // written) bytes, valid until `self` is dropped; the borrow of `self` keeps it, and
        // no `&mut` to them can exist meanwhile. `len <= isize::MAX` was checked.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }

    /// The `len` bytes, to be filled.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the mapping is writable; `&mut self` makes this
        // borrow the only one.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `zeroed`, unmapped once, here; no borrow of
        // its bytes can outlive `self`. munmap cannot fail for a mapping of our own, and
        // nothing could be done about it in a drop anyway.
        unsafe {
            libc::munmap(self.start.as_ptr().cast(), self.mapped);
        }
    }
}

/// The size of a memory page: 4 KiB on most Linux machines, 16 KiB or 64 KiB on some arm64
/// kernels (the Raspberry Pi 5's, for one).
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // POSIX allows -1 ("no limit"); Linux always answers. 4096 is the smallest Linux page.
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_holds_len_zeros_and_keeps_what_is_written() {
        let page = page_size();
        for len in [1, page - 1, page, page + 1, 3 * page] {
            let mut pages = Pages::zeroed(len).unwrap();
            assert_eq!(pages.mapped % page, 0);
            assert!(pages.mapped >= len && pages.mapped - len < page);
            assert_eq!(pages.start.as_ptr() as usize % page, 0);
            assert_eq!(pages.as_slice().len(), len);
            assert!(pages.as_slice().iter().all(|&b| b == 0));
            for (i, b) in pages.as_mut_slice().iter_mut().enumerate() {
                *b = i as u8;
            }
            assert!(pages
                .as_slice()
                .iter()
                .enumerate()
                .all(|(i, &b)| b == i as u8));
        }
    }

    #[test]
    fn empty_and_impossible_lengths_are_refused() {
        assert_eq!(
            Pages::zeroed(0).err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
        assert_eq!(
            Pages::zeroed(usize::MAX).err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
    }

    #[test]
    fn page_size_is_a_power_of_two_of_at_least_4_kib() {
        let page = page_size();
        assert!(page >= 4096 && page.is_power_of_two(), "{page}");
    }
}

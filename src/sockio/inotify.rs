//! inotify (Linux): which files of the watched directories a writer closed
//! or renamed into place, so that a file is served the moment its copy
//! ends instead of after a guess from its modification time.
//!
//! The descriptor is non-blocking and signal-driven (`O_ASYNC`, SIGIO to
//! this process): an event interrupts the loop's blocking receive, whose
//! handler only sets the flag `take_files_changed` reads, and the loop
//! reads the events between two datagrams. Nothing here decides what an
//! event means.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a directory is watched for: a writer closed a file
/// (`IN_CLOSE_WRITE`), a file or directory was renamed in or out
/// (`IN_MOVED_TO`, `IN_MOVED_FROM`), created (`IN_CREATE`: a writer began,
/// or a new sub-directory), written (`IN_MODIFY`: a writer is at work) or
/// deleted (`IN_DELETE`); and the directory itself removed or renamed
/// (`IN_DELETE_SELF`, `IN_MOVE_SELF`).
pub(crate) const WATCHED: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// One inotify instance.
#[derive(Debug)]
pub(crate) struct Inotify {
    fd: OwnedFd,
}

/// One event as the kernel wrote it: the watch, what happened, and the
/// name in the watched directory (empty for the directory itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event<'b> {
    /// The watch descriptor.
    pub(crate) wd: i32,
    /// `IN_*` bits.
    pub(crate) mask: u32,
    /// The entry's name, without the kernel's trailing NULs.
    pub(crate) name: &'b [u8],
}

impl Inotify {
    /// A non-blocking instance whose events raise SIGIO in this process
    /// (the handler is installed first, so the signal never kills it).
    ///
    /// # Errors
    /// As `inotify_init1`, `sigaction` and `fcntl`; the caller then works
    /// without inotify.
    pub(crate) fn new() -> io::Result<Inotify> {
        super::signals::install_io_flag()?;
        // SAFETY: no pointers; returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just opened and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on a descriptor we own, integer arguments only.
        let pid = unsafe { libc::getpid() };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETOWN, pid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0
            || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_ASYNC) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Inotify { fd })
    }

    /// Raises SIGIO in the calling thread only (`F_SETOWN_EX`,
    /// `F_OWNER_TID`), not in any thread of the process: the thread that
    /// runs the loop, whose blocking receive the signal must interrupt. A
    /// program that embeds the server in a thread of its own then sees no
    /// interrupted calls in its other threads.
    ///
    /// # Errors
    /// As `fcntl`.
    pub(crate) fn signal_this_thread(&self) -> io::Result<()> {
        /// Linux's `struct f_owner_ex`; it and the two constants are the
        /// same on every architecture, and the libc crate has them only for
        /// some.
        #[repr(C)]
        struct OwnerEx {
            kind: libc::c_int,
            pid: libc::pid_t,
        }
        const F_SETOWN_EX: libc::c_int = 15;
        const F_OWNER_TID: libc::c_int = 0;
        // SAFETY: no arguments; returns the caller's thread id.
        let tid = unsafe { libc::gettid() };
        let owner = OwnerEx {
            kind: F_OWNER_TID,
            pid: tid,
        };
        // SAFETY: fcntl on a descriptor we own; `owner` is a live
        // f_owner_ex for the call, which only reads it.
        let rc = unsafe { libc::fcntl(self.fd.as_raw_fd(), F_SETOWN_EX, &owner) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches the directory `dir` for [`WATCHED`]; the watch descriptor.
    ///
    /// # Errors
    /// As `inotify_add_watch`: `ENOSPC` when the user's watch limit
    /// (`fs.inotify.max_user_watches`) is reached.
    pub(crate) fn add_watch(&self, dir: &Path) -> io::Result<i32> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `path` is a live NUL-terminated string for the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), WATCHED) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Stops watch `wd` (errors ignored: a watch whose directory is gone
    /// is removed by the kernel already).
    pub(crate) fn remove_watch(&self, wd: i32) {
        // SAFETY: integer arguments only.
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
    }

    /// Reads the events queued now into `buf` (which should hold 4 KiB or
    /// more) and returns how many bytes it filled: 0 when none is queued.
    /// Parse them with [`events`].
    ///
    /// # Errors
    /// As `read`, except `EAGAIN` (nothing queued: 0) and `EINTR` (0).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live, writable buffer of the length given.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// Whether a process has the regular file at `path` open for writing,
/// asked the kernel without waiting: a read lease (`F_SETLEASE`,
/// `F_RDLCK`) is granted only when nobody has, and is given back at once.
/// For a file that was there before its directory was watched, whose
/// writer's close inotify could not report. `Some(false)`: nobody writes
/// it; `Some(true)`: somebody does; `None`: the kernel would not say (the
/// file is another user's and the server lacks `CAP_LEASE`, leases are
/// off, the file is gone or not regular).
///
/// A writer that opens the file in the microseconds the lease is held
/// waits until it is given back; the lease-break signal is SIGIO, whose
/// handler only sets the flag.
pub(crate) fn has_writer(path: &Path) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor open for the borrow of `file`, integer
    // arguments only.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return (e.raw_os_error() == Some(libc::EAGAIN)).then_some(true);
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    Some(false)
}

/// The size of `struct inotify_event` before its name.
const HEADER: usize = 16;

/// The events in `bytes` (what [`Inotify::read`] filled), in order; stops
/// at anything that does not parse.
pub(crate) fn events(bytes: &[u8]) -> impl Iterator<Item = Event<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let header = rest.get(..HEADER)?;
        let word = |at: usize| -> Option<[u8; 4]> { header.get(at..at + 4)?.try_into().ok() };
        let wd = i32::from_ne_bytes(word(0)?);
        let mask = u32::from_ne_bytes(word(4)?);
        let len = usize::try_from(u32::from_ne_bytes(word(12)?)).ok()?;
        let end = HEADER.checked_add(len)?;
        let raw = rest.get(HEADER..end)?;
        rest = rest.get(end..)?;
        let name_len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(Event {
            wd,
            mask,
            name: raw.get(..name_len)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_and_a_cut_event_ends_the_list() {
        let mut bytes = Vec::new();
        for (wd, mask, name) in [
            (1i32, libc::IN_CLOSE_WRITE, &b"a.bin\0\0\0"[..]),
            (2, libc::IN_DELETE_SELF, &b""[..]),
        ] {
            bytes.extend(wd.to_ne_bytes());
            bytes.extend(mask.to_ne_bytes());
            bytes.extend(0u32.to_ne_bytes());
            bytes.extend((name.len() as u32).to_ne_bytes());
            bytes.extend(name);
        }
        let parsed: Vec<_> = events(&bytes)
            .map(|e| (e.wd, e.mask, e.name.to_vec()))
            .collect();
        assert_eq!(
            parsed,
            [
                (1, libc::IN_CLOSE_WRITE, b"a.bin".to_vec()),
                (2, libc::IN_DELETE_SELF, Vec::new())
            ]
        );
        assert_eq!(events(&bytes[..bytes.len() - 1]).count(), 1);
    }

    #[test]
    fn a_file_open_for_writing_has_a_writer_and_a_closed_one_none() {
        let dir = std::env::temp_dir().join(format!("iotota-lease-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slot0.bin");
        let writer = std::fs::File::create(&path).unwrap();
        let open = has_writer(&path);
        drop(writer);
        let closed = has_writer(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        // As root or the file's owner (the test's case) the kernel says.
        assert_eq!((open, closed), (Some(true), Some(false)));
    }

    #[test]
    fn a_closed_file_is_reported_by_name() {
        let dir = std::env::temp_dir().join(format!("iotota-inotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let inotify = Inotify::new().unwrap();
        let wd = inotify.add_watch(&dir).unwrap();
        std::fs::write(dir.join("slot0.bin"), b"x").unwrap();
        let mut buf = [0u8; 4096];
        let n = inotify.read(&mut buf).unwrap();
        let closed = events(&buf[..n])
            .any(|e| e.wd == wd && e.mask & libc::IN_CLOSE_WRITE != 0 && e.name == b"slot0.bin");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(closed);
    }
}

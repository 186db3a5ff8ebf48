//! Signals: the handlers of SIGHUP, SIGTERM, SIGINT and SIGIO (raised by
//! the inotify descriptor, see `inotify`) only set flags, which the loop
//! reads after each receive or timeout.
//!
//! Nothing else runs in a handler: no log line, no allocation, no rescan.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGHUP: rescan now.
static HANGUP: AtomicBool = AtomicBool::new(false);
/// Set by SIGTERM or SIGINT: stop the loop.
static TERMINATE: AtomicBool = AtomicBool::new(false);
/// Set by SIGIO: inotify has events for the watched directories.
static FILES_CHANGED: AtomicBool = AtomicBool::new(false);

/// The handler of all three signals: sets the flag of the one received.
extern "C" fn on_signal(signal: libc::c_int) {
    // Only atomic stores: async-signal-safe.
    if signal == libc::SIGHUP {
        HANGUP.store(true, Ordering::Relaxed);
    } else if signal == libc::SIGIO {
        FILES_CHANGED.store(true, Ordering::Relaxed);
    } else {
        TERMINATE.store(true, Ordering::Relaxed);
    }
}

/// Installs the handlers of SIGHUP, SIGTERM and SIGINT. Without
/// SA_RESTART, so a blocking receive returns (EINTR) and the loop sees the
/// flag at once.
///
/// # Errors
/// As `sigaction`.
pub(crate) fn install_signal_flags() -> io::Result<()> {
    [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGIO]
        .into_iter()
        .try_for_each(install)
}

/// Installs the SIGIO handler alone, before an inotify descriptor is made
/// signal-driven: SIGIO's default action would end the process.
///
/// # Errors
/// As `sigaction`.
pub(crate) fn install_io_flag() -> io::Result<()> {
    install(libc::SIGIO)
}

/// Installs [`on_signal`] for `signal`.
fn install(signal: libc::c_int) -> io::Result<()> {
    {
        // SAFETY: sigaction is plain data; all zeroes is an empty mask and
        // no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `action.sa_mask` is a live sigset_t.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is initialised; the handler only stores atomics,
        // which is async-signal-safe; the old action is not asked for.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGIO came since the last call: a load first, so that the
/// common answer (no) costs no atomic write.
pub(crate) fn take_files_changed() -> bool {
    FILES_CHANGED.load(Ordering::Relaxed) && FILES_CHANGED.swap(false, Ordering::Relaxed)
}

/// Whether SIGHUP came since the last call.
pub(crate) fn take_hangup() -> bool {
    HANGUP.swap(false, Ordering::Relaxed)
}

/// Whether SIGTERM or SIGINT came.
pub(crate) fn terminating() -> bool {
    TERMINATE.load(Ordering::Relaxed)
}

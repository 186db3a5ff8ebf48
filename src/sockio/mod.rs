//! The system calls std does not offer, for the socket loop and its
//! start-up; the crate's unsafe code lives here (and in `pages`, the memory
//! of large images), each submodule one concern:
//!
//! * `pktinfo`: receiving a datagram with the address it was sent to and
//!   sending a reply from that address (`recvmsg`/`sendmsg` with
//!   IP_PKTINFO and IPV6_PKTINFO), and the plain `recvfrom`;
//! * `interfaces`: listing the network interfaces, their names and
//!   indexes, and joining an IPv4 multicast group on one;
//! * `bind`: a socket bound with options that must precede the bind
//!   (IP_FREEBIND, SO_REUSEPORT);
//! * `wait`: waiting on several sockets (`poll`) and the monotonic clock
//!   the loop reads;
//! * `signals`: the SIGHUP, SIGTERM, SIGINT and SIGIO handlers, which
//!   only set flags the loop reads;
//! * `inotify`: the directory watches that tell when a writer closed a
//!   file.
//!
//! Linux only (glibc and musl): only `libc` items both provide are used,
//! and fields whose types differ between them are assigned with `as _`.
//! Nothing here allocates on the per-datagram path, logs, or knows CoAP.
//!
//! The crate denies unsafe code; its `mod sockio` declaration alone allows
//! it (for these submodules too), and every unsafe block here says why it
//! is sound.

mod bind;
pub(crate) mod inotify;
mod interfaces;
mod pktinfo;
mod signals;
mod wait;

pub(crate) use bind::bind_with;
pub(crate) use interfaces::{
    interface_index, interface_name, interface_name_in, interfaces, join_v4_on, NameBuf,
};
pub(crate) use pktinfo::{
    enable_pktinfo, recv_plain, recv_with_dest, send_from, LocalDest, Received,
};
pub(crate) use signals::{install_signal_flags, take_files_changed, take_hangup, terminating};
pub(crate) use wait::{monotonic_ms, wait_readable, MAX_SOCKETS};

/// Sets the boolean socket option `level`/`name` on `fd`.
pub(super) fn set_flag(
    fd: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open for the borrow of `fd`; the option
    // value points to a live c_int and the length given is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

//! coaps: DTLS 1.2 with pre-shared keys (RFC 7252 §9.1.3.1,
//! TLS_PSK_WITH_AES_128_CCM_8), X.509 certificates (§9.1.3.3) and raw
//! public keys (§9.1.3.2, RFC 7250), the last two with
//! TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 or _AES_128_CCM_8, on one
//! socket, in front of the service, sans-IO like the service: datagrams
//! in, records to send and decrypted requests out, and a timer the loop
//! wakes for. Module `psk` holds the PSK file, `cert` the certificates
//! and their check, `rpk` the raw key list, `client` a device's
//! credentials in every mode. The record layer and the handshake are the
//! `dimpl` crate's (with small additions, see `src/vendor/README.md`); this
//! module decides what reaches an engine and keeps every table bounded.
//!
//! # Budgets for what has not authenticated
//!
//! * A ClientHello without a valid cookie costs at most three HMACs (two
//!   checks, one new cookie) and an answer no larger than itself, built here (module `hello`); nothing is kept and
//!   nothing is allocated per sender. The cookie is an HMAC-SHA256 of the
//!   sender's address and port and the hello's fields under a secret from
//!   the operating system that rotates every 30 s (the current and the
//!   previous one are accepted).
//! * Only a hello with a valid cookie reaches an engine, which draws its
//!   randomness from the operating system like any other: nothing the
//!   sender chooses decides the server's random or keys.
//! * Certificate and raw public key handshakes, which cost an ECDHE key and
//!   a signature each, start at most
//!   [`Limits::public_key_handshakes_per_s`] times a second.
//! * Half-open handshakes are capped overall ([`Limits::max_handshakes`])
//!   and per source ([`Limits::handshakes_per_source`], IPv4 /32 or IPv6
//!   /64), evict only each other, and end after 15 s or 20 datagrams.
//!   Before a handshake completes, only whole ClientHello or
//!   ClientKeyExchange messages, ChangeCipherSpec and encrypted records
//!   of at most 512 bytes per datagram reach its engine (module `records`): a
//!   fragment, a plaintext alert (anyone can forge one) or a later
//!   message is dropped unread, so a spoofer can neither fill the
//!   engine's queue nor end someone else's handshake with them.
//! * A handshake that fails on the key gets a fatal alert
//!   (unknown_psk_identity or decrypt_error, RFC 4279 §2): the client
//!   gives up at once. Its address proved it receives (the cookie).
//! * Established sessions ([`Limits::max_sessions`]) end after
//!   [`Limits::session_idle_ms`] without a datagram; a full table evicts
//!   the least recently used one, and only for a newly authenticated
//!   peer. A session is replaced only when its replacement finished its
//!   handshake (RFC 6347 §4.2.8).

mod cert;
mod client;
mod front;
mod hello;
mod psk;
mod records;
mod rpk;

pub use cert::{CertificateAuth, CertifiedKey, DeviceNames, Refusal, ServerName, TrustAnchors};
pub use client::ClientCredentials;
pub use front::{Front, FrontStats, Handled};
pub use hello::HELLO_VERIFY_LEN;
pub use psk::{ClientPsk, PskTable};
pub use rpk::{
    fingerprint, server_key, server_key_from_pem, Fingerprint, RawKeyAuth, RawPublicKeys,
};

/// The coaps port (RFC 7252 §6.2).
pub const DEFAULT_PORT: u16 = 5684;
/// Established sessions kept by default (`--max-sessions`).
pub const DEFAULT_MAX_SESSIONS: usize = 1024;
/// Half-open handshakes kept by default (`--max-handshakes`).
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Half-open handshakes one source (IPv4 address, IPv6 /64) may hold.
pub const HANDSHAKES_PER_SOURCE: usize = 4;
/// Certificate and raw public key handshakes started per second by
/// default (`--max-pk-handshakes`): each costs the server an ECDHE key
/// and an ECDSA signature (about 0.4 ms on a PC, tens on a router's CPU),
/// twenty times a PSK one.
pub const DEFAULT_PUBLIC_KEY_HANDSHAKES_PER_S: usize = 32;
/// Seconds of silence that end an established session by default
/// (`--session-idle`), as libcoap's server.
pub const DEFAULT_SESSION_IDLE_S: u64 = 300;
/// Largest record the engine writes: a CoAP reply of
/// [`crate::service::MAX_REPLY_LEN`] bytes plus the record header, the
/// explicit nonce and the CCM-8 tag.
const MTU: usize = 1400;

/// Where cookie secrets come from: [`os_entropy`] in the server, a fixed
/// sequence where a test or a fuzzer must reproduce a run.
pub type Entropy = Box<dyn FnMut(&mut [u8; 32]) + Send>;

/// The bounds of the front's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Established sessions (`--max-sessions`).
    pub max_sessions: usize,
    /// Half-open handshakes, all sources together (`--max-handshakes`).
    pub max_handshakes: usize,
    /// Half-open handshakes of one source.
    pub handshakes_per_source: usize,
    /// Milliseconds of silence that end an established session.
    pub session_idle_ms: u64,
    /// Certificate and raw public key handshakes started per second, all
    /// sources together (`--max-pk-handshakes`): beyond it such a hello
    /// is dropped and its client's retransmission tried again.
    pub public_key_handshakes_per_s: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshakes_per_source: HANDSHAKES_PER_SOURCE,
            session_idle_ms: DEFAULT_SESSION_IDLE_S * 1000,
            public_key_handshakes_per_s: DEFAULT_PUBLIC_KEY_HANDSHAKES_PER_S,
        }
    }
}

impl Limits {
    /// The limits with every count at least 1 and the idle time at
    /// least one second.
    fn sane(self) -> Limits {
        Limits {
            max_sessions: self.max_sessions.max(1),
            max_handshakes: self.max_handshakes.max(1),
            handshakes_per_source: self.handshakes_per_source.max(1),
            session_idle_ms: self.session_idle_ms.max(1000),
            public_key_handshakes_per_s: self.public_key_handshakes_per_s.max(1),
        }
    }
}

/// Fills `secret` from the operating system's random source (the one
/// the engines draw from); used for the cookie secrets. Should the source
/// fail, std's per-process random SipHash keys (themselves from the
/// operating system) fill it instead.
pub fn os_entropy(secret: &mut [u8; 32]) {
    let random = dimpl::crypto::rust_crypto::default_provider().secure_random;
    if random.fill(secret).is_err() {
        use std::hash::BuildHasher;
        for (i, chunk) in secret.chunks_mut(8).enumerate() {
            let word = std::collections::hash_map::RandomState::new().hash_one(i);
            chunk.copy_from_slice(&word.to_le_bytes());
        }
    }
}

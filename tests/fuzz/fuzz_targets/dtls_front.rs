//! Fuzz target `dtls_front`: the coaps front (`dtls::Front`) and the
//! service behind it, fed datagrams from a few peers. The input format
//! and the properties live in `checks/dtls_front.rs`, which
//! tests/fuzz_dtls.rs also runs under `cargo test --features dtls` on the
//! seeds and on crash reproducers.
#![no_main]

#[path = "../checks/dtls_front.rs"]
mod dtls_front;

libfuzzer_sys::fuzz_target!(|data: &[u8]| dtls_front::check(data));

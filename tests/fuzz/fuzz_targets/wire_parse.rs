//! Fuzz target `wire_parse`: `wire::Message::parse` on arbitrary bytes.
//! The properties live in `checks/wire.rs`, which `tests/regressions.rs`
//! also runs under `cargo test` on the seeds and on crash reproducers.
#![no_main]

#[path = "../checks/wire.rs"]
mod wire;

libfuzzer_sys::fuzz_target!(|data: &[u8]| wire::check(data));

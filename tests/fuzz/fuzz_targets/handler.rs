//! Fuzz target `handler`: the whole protocol core over a small catalog.
//! The input format and the properties live in `checks/handler.rs`, which
//! `tests/regressions.rs` also runs under `cargo test` on the seeds and on
//! crash reproducers.
#![no_main]

#[path = "../checks/handler.rs"]
mod handler;

libfuzzer_sys::fuzz_target!(|data: &[u8]| handler::check(data));

//! `iot-ota-client`: a device emulator and operator tool on the same `wire`
//! code as the server, and, built with the `loadgen` feature only, the
//! `bench` and `baseline` subcommands of `make bench`. The protocol work is
//! in [`coap`] (sans-IO) and [`client`] (the socket loop); [`options`] reads
//! the command line, [`run`] calls the protocol code for the mode asked
//! for and [`output`] writes the body, the summary and the progress line.
//! This file picks the subcommand and holds the exit codes. None of these
//! four files builds or parses a message itself.
//!
//! The load generator is a feature of its own, off by default, because the
//! packages install this program: `baseline` answers any datagram from
//! any address with 1 KiB or more (an amplifier), and `bench` sends
//! traffic as fast as it can to any address it is given. Neither belongs
//! on a router or a Raspberry Pi that only needs the operator's tool, so
//! the builds the packages make (`cargo deb`, OpenWrt, `make dist`) leave
//! them out, and `make bench` builds them in.
//!
//! Exit codes: 0 downloaded (or GET done), 3 no update available, 1 error
//! (timeout, unreachable, error response, inconsistent body), 2 usage.

#[cfg(feature = "loadgen")]
mod baseline;
#[cfg(feature = "loadgen")]
mod bench;
mod client;
mod coap;
mod options;
mod output;
mod run;
#[cfg(feature = "dtls")]
mod secure;

use std::process::ExitCode;

pub(crate) const PROGRAM: &str = "iot-ota-client";
/// Exit status of a failed run (of every subcommand).
pub(crate) const ERROR_EXIT: u8 = 1;
/// Exit status of a usage error (of every subcommand), and of `bench` or
/// `baseline` in a build without the load generator.
pub(crate) const USAGE_EXIT: u8 = 2;
pub(crate) const NO_UPDATE_EXIT: u8 = 3;

/// A usage error of `command` (`iot-ota-client` or a subcommand such as
/// `iot-ota-client bench`): one line, a hint, exit 2.
pub(crate) fn usage_error(command: &str, message: &str) -> ExitCode {
    eprintln!("{command}: {message}");
    eprintln!("Try '{command} --help' for more information.");
    ExitCode::from(USAGE_EXIT)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        #[cfg(feature = "loadgen")]
        Some("bench") => return bench::bench_main(args.get(1..).unwrap_or(&[])),
        #[cfg(feature = "loadgen")]
        Some("baseline") => return baseline::baseline_main(args.get(1..).unwrap_or(&[])),
        // Refused before any option is read, so that no argument can make
        // a build without the load generator open a socket for them.
        #[cfg(not(feature = "loadgen"))]
        Some(name @ ("bench" | "baseline")) => return no_load_generator(name),
        _ => {}
    }
    let config = match options::parse_args(&args) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => return usage_error(PROGRAM, &message),
    };
    run::run(&config)
}

/// `bench` or `baseline` in a build without the `loadgen` feature: one
/// line saying so, exit 2, and nothing opened.
#[cfg(not(feature = "loadgen"))]
fn no_load_generator(name: &str) -> ExitCode {
    eprintln!(
        "{PROGRAM}: '{name}' is part of the load generator, which this build lacks: \
         build with --features loadgen (make bench)"
    );
    ExitCode::from(USAGE_EXIT)
}

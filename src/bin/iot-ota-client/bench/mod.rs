//! The load generator behind `iot-ota-client bench`, used by `make bench`.
//! The protocol is the client's ([`crate::coap`]: requests, reply matching,
//! the block cursor, Message IDs, the retransmission schedule); what is
//! its own is the single-thread scheduling of many devices and the
//! byte-for-byte check against the image. It never allocates per request.
//!
//! [`options`] reads the command line into a configuration, [`generator`]
//! runs the devices, [`report`] turns what they measured into the two
//! lines printed.
//!
//! `bench --baseline` drives [`crate::baseline`], the ceiling for a
//! single-thread request/response server on the machine at hand, with the
//! same loop and the same requests, minus the CoAP checks.

mod generator;
mod options;
mod report;

use crate::options::parse_subcommand;
use crate::{usage_error, ERROR_EXIT};
use generator::run;
use options::{bench_config, bench_options, BENCH_BRIEF};
use report::{human_line, result_line};
use std::process::ExitCode;

/// The command name in messages.
const COMMAND: &str = "iot-ota-client bench";

/// `iot-ota-client bench SERVER ...`: runs the load generator and prints a
/// human line and a `RESULT key=value ...` line on stdout.
///
/// `args` are the arguments after `bench`. Exit status 0 when every block
/// matched, 1 on a mismatch, a failed run or no block at all, 2 on a usage
/// error.
pub(crate) fn bench_main(args: &[String]) -> ExitCode {
    let matches = match parse_subcommand(COMMAND, &bench_options(), args, BENCH_BRIEF) {
        Ok(m) => m,
        Err(done) => return done,
    };
    let config = match bench_config(&matches) {
        Ok(config) => config,
        Err(message) => return usage_error(COMMAND, &message),
    };
    let report = match run(&config) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{COMMAND}: {e}");
            return ExitCode::from(ERROR_EXIT);
        }
    };
    println!("{}", human_line(&config, &report));
    println!("{}", result_line(&config, &report));
    if let Some(first) = &report.first_mismatch {
        eprintln!("{COMMAND}: first mismatch: {first}");
    }
    if report.mismatches > 0 || report.blocks == 0 {
        ExitCode::from(ERROR_EXIT)
    } else {
        ExitCode::SUCCESS
    }
}

//! `iot-ota-server`: command line, logging set-up, catalog, socket, loop.
//!
//! Exit codes: 0 after SIGTERM or SIGINT, 2 for a usage error, 1 for a
//! start-up failure an operator must fix (missing directory, catalog
//! collision, address in use).
//!
//! The command line is read in [`options`], the server started and run in
//! [`startup`]; this file sets up logging and turns the outcome into an
//! exit code.

mod options;
mod startup;

use iot_ota::logfmt;
use log::error;
use std::process::ExitCode;

const USAGE_EXIT: u8 = 2;
const RUNTIME_EXIT: u8 = 1;

/// A usage error: one line, a hint, exit 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("iot-ota-server: {message}");
    eprintln!("Try 'iot-ota-server --help' for more information.");
    ExitCode::from(USAGE_EXIT)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match options::parse_args(&args) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => return usage_error(&message),
    };
    logfmt::init(config.log_format, config.level);
    match startup::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::from(RUNTIME_EXIT)
        }
    }
}

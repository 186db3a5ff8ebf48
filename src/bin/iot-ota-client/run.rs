//! Running the mode the command line asked for: a download (device mode,
//! legacy or a plain GET) or an observation, on a plain or a coaps client;
//! errors become a message and exit code 1.

use crate::client::{BodyRequest, Client, ClientError, Transfer};
use crate::coap::{self, DevicePayload, Get, Progress, Resource, Response};
use crate::options::{Config, Mode};
use crate::output::{flush_stdout, io_error, plural, summary, write_body, ProgressLine};
use crate::{ERROR_EXIT, NO_UPDATE_EXIT, PROGRAM};
use coap_lite::ResponseType;
use iot_ota::firmware::{self, DeviceRequest};
use iot_ota::wire::Block;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

/// Resolves the server, connects (for coaps with a handshake), runs the
/// mode; returns the exit code.
pub(crate) fn run(config: &Config) -> ExitCode {
    let authority = config.target.authority();
    let server = match config.target.resolve() {
        Ok(server) => server,
        Err(e) => return fail(&format!("cannot resolve {authority}: {e}")),
    };
    let shown = iot_ota::iface::display(server);
    #[cfg(feature = "dtls")]
    if let Some(credentials) = &config.credentials {
        return match Client::connect_secure(server, config.params, credentials) {
            Ok(mut client) => run_with(&mut client, config, server),
            Err(ClientError::Io(e)) => fail(&format!(
                "cannot open a UDP socket to {shown}: {e}{}",
                zone_hint(server)
            )),
            Err(e) => fail(&format!("{shown}: {e}{}", zone_hint(server))),
        };
    }
    let mut client = match Client::connect(server, config.params) {
        Ok(client) => client,
        Err(e) => {
            return fail(&format!(
                "cannot open a UDP socket to {shown}: {e}{}",
                zone_hint(server)
            ))
        }
    };
    run_with(&mut client, config, server)
}

/// Runs the mode's requests on `client`, connected (and for coaps with
/// its session); returns the exit code.
fn run_with(client: &mut Client, config: &Config, server: std::net::SocketAddr) -> ExitCode {
    let shown = iot_ota::iface::display(server);
    if config.observe {
        return match observe(client, config) {
            Ok(code) => code,
            Err(e) => fail(&format!("{shown}: {e}{}", zone_hint(server))),
        };
    }
    let started = Instant::now();
    let mut body = Vec::new();
    let mut line = ProgressLine::new(std::io::stderr().is_terminal());
    let result = fetch(client, config, &mut body, &mut |p| line.show(p));
    line.clear();
    let (what, transfer) = match result {
        Ok(done) => done,
        Err(ClientError::NoUpdate) => {
            if let Mode::Update {
                pid,
                fw_type,
                version,
                ..
            } = &config.mode
            {
                let type_name = match *fw_type {
                    firmware::TYPE_APP => "APP".to_owned(),
                    n => n.to_string(),
                };
                eprintln!(
                    "no update available for {} type {type_name} version {}",
                    String::from_utf8_lossy(pid),
                    iot_ota::firmware::VersionText(*version)
                );
            }
            return ExitCode::from(NO_UPDATE_EXIT);
        }
        Err(e) => return fail(&format!("{shown}: {e}{}", zone_hint(server))),
    };
    if let Err(e) = write_body(config.output.as_ref(), &body) {
        return fail(&e);
    }
    eprintln!(
        "{}",
        summary(&what, &transfer, client, config.szx, started.elapsed())
    );
    ExitCode::SUCCESS
}

/// Why a link-local address without a zone fails (the kernel says only
/// "Invalid argument"): the hint appended to the error.
fn zone_hint(server: std::net::SocketAddr) -> String {
    match server {
        // fe80::/10 (Ipv6Addr::is_unicast_link_local is newer than the MSRV).
        std::net::SocketAddr::V6(v6)
            if v6.scope_id() == 0 && v6.ip().segments()[0] & 0xffc0 == 0xfe80 =>
        {
            format!(
                "; a link-local address needs its interface: [{}%IFACE]:{}",
                v6.ip(),
                v6.port()
            )
        }
        _ => String::new(),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{PROGRAM}: {message}");
    ExitCode::from(ERROR_EXIT)
}

/// Downloads the image `id` (`/updates/{id}`) into `body`, from `offset`
/// when one is given (sent as the 4-byte payload), in blocks of `szx`.
fn download_image(
    client: &mut Client,
    id: &str,
    offset: Option<u32>,
    szx: u8,
    body: &mut Vec<u8>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Transfer, ClientError> {
    let resource = Resource::image(id.as_bytes());
    let offset_payload = offset.map(u32::to_le_bytes);
    let request = BodyRequest {
        resource: &resource,
        payload: offset_payload.as_ref().map_or(&[][..], |p| &p[..]),
        legacy: false,
    };
    client.download(&request, szx, body, progress)
}

/// Runs the mode's requests; returns what was fetched (for the summary)
/// and the transfer.
fn fetch(
    client: &mut Client,
    config: &Config,
    body: &mut Vec<u8>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(String, Transfer), ClientError> {
    match &config.mode {
        Mode::Get(resource) => {
            let request = BodyRequest {
                resource,
                payload: &[],
                legacy: false,
            };
            let transfer = client.download(&request, config.szx, body, progress)?;
            Ok((format!("{resource}"), transfer))
        }
        Mode::Update {
            pid,
            offset,
            legacy,
            ..
        } => {
            let device = config.mode.lookup().ok_or(ClientError::RequestTooLarge)?;
            let pid_text = String::from_utf8_lossy(pid);
            let from = match offset {
                Some(n) if *n > 0 => format!(" from offset {n}"),
                _ => String::new(),
            };
            if *legacy {
                let legacy = DeviceRequest {
                    offset: Some(offset.unwrap_or(0)),
                    ..device
                };
                let payload = DevicePayload::new(&legacy).ok_or(ClientError::RequestTooLarge)?;
                let resource = Resource::updates();
                let request = BodyRequest {
                    resource: &resource,
                    payload: payload.as_bytes(),
                    legacy: true,
                };
                let transfer = client.download(&request, config.szx, body, progress)?;
                Ok((format!("{pid_text} (legacy protocol){from}"), transfer))
            } else {
                let id = client.lookup(&device)?;
                let transfer = download_image(client, &id, *offset, config.szx, body, progress)?;
                Ok((format!("{pid_text} id {id}{from}"), transfer))
            }
        }
    }
}

/// `--observe`: registers, reports the current state and every
/// notification, re-registers when one is overdue (Max-Age), and ends
/// with a deregistration after `--count` notifications; in device mode
/// with `-o`, the first notification that names an image has it
/// downloaded and ends the run. Returns the exit code.
fn observe(client: &mut Client, config: &Config) -> Result<ExitCode, ClientError> {
    let lookup_payload;
    let updates = Resource::updates();
    let (resource, payload, block2) = match &config.mode {
        Mode::Get(resource) => (resource, &[][..], Some(Block::at(0, config.szx))),
        Mode::Update { .. } => {
            let device = config.mode.lookup().ok_or(ClientError::RequestTooLarge)?;
            lookup_payload = DevicePayload::new(&device).ok_or(ClientError::RequestTooLarge)?;
            (&updates, lookup_payload.as_bytes(), None)
        }
    };
    let get = Get {
        resource,
        payload,
        block2: block2.flatten(),
        size2: None,
        observe: None,
    };
    let (observation, first) = client.register(&get)?;
    let Some(mut observation) = observation else {
        eprintln!(
            "{PROGRAM}: the server does not offer Observe for {resource} (it answered {} {})",
            first.code,
            coap::code_name(first.code)
        );
        return Ok(ExitCode::from(ERROR_EXIT));
    };
    let mut seen = 0u64;
    let mut current = first;
    loop {
        if !current.is(ResponseType::Content) {
            eprintln!(
                "{PROGRAM}: the observation ended: {}",
                ClientError::Status {
                    code: current.code,
                    diagnostic: current.diagnostic(),
                }
            );
            return Ok(ExitCode::from(ERROR_EXIT));
        }
        if let Some(done) = report(client, config, &get, &current, seen)? {
            client.deregister(&get, &observation)?;
            return Ok(done);
        }
        if config.count.is_some_and(|count| seen >= count) {
            client.deregister(&get, &observation)?;
            return Ok(ExitCode::SUCCESS);
        }
        current = loop {
            let until = observation.fresh_until;
            match client.next_notification(&mut observation, until)? {
                Some(notification) => break notification,
                None => {
                    // Nothing while the last answer was fresh: ask again.
                    let answer = client.reregister(&get, &mut observation)?;
                    if answer.observe.is_some() || !answer.is(ResponseType::Content) {
                        break answer;
                    }
                }
            }
        };
        seen += 1;
    }
}

/// Reports the `n`th answer of an observation (0: the registration's);
/// `Some` exit code when the run is complete (device mode with `-o`, after
/// downloading the image the answer names).
fn report(
    client: &mut Client,
    config: &Config,
    get: &Get<'_>,
    answer: &Response,
    n: u64,
) -> Result<Option<ExitCode>, ClientError> {
    let etag = answer
        .etag
        .as_deref()
        .map(|tag| tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_default();
    match &config.mode {
        Mode::Update { offset, .. } => {
            let id = String::from_utf8_lossy(&answer.payload).into_owned();
            if id.is_empty() {
                eprintln!("notification {n}: no update yet");
                println!("no update");
                flush_stdout();
                return Ok(None);
            }
            eprintln!("notification {n}: update {id}");
            println!("update {id}");
            flush_stdout();
            let Some(path) = &config.output else {
                return Ok(None);
            };
            let started = Instant::now();
            let mut body = Vec::new();
            let transfer =
                download_image(client, &id, *offset, config.szx, &mut body, &mut |_| {})?;
            write_body(Some(path), &body).map_err(|e| ClientError::Output(io_error(e)))?;
            let what = format!("id {id}");
            eprintln!(
                "{}",
                summary(&what, &transfer, client, config.szx, started.elapsed())
            );
            Ok(Some(ExitCode::SUCCESS))
        }
        Mode::Get(resource) => {
            let more = matches!(answer.block2, Some(Ok(block)) if block.more);
            let body = if more {
                // The rest of the new body, from its first block, as a
                // plain download (which checks that every block carries
                // the same ETag).
                let request = BodyRequest {
                    resource,
                    payload: get.payload,
                    legacy: false,
                };
                let mut body = Vec::new();
                client.download(&request, config.szx, &mut body, &mut |_| {})?;
                body
            } else {
                answer.payload.clone()
            };
            eprintln!(
                "notification {n}: {} of {resource}, etag {etag}",
                plural(body.len() as u64, "byte")
            );
            match &config.output {
                // Replaced in one rename: a reader never sees half a body.
                Some(path) => {
                    let partial = path.with_extension("partial");
                    write_body(Some(&partial), &body)
                        .and_then(|()| {
                            std::fs::rename(&partial, path)
                                .map_err(|e| format!("cannot write {}: {e}", path.display()))
                        })
                        .map_err(|e| ClientError::Output(io_error(e)))?;
                }
                None => write_body(None, &body).map_err(|e| ClientError::Output(io_error(e)))?,
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_local_address_without_zone_gets_a_hint() {
        let hint = zone_hint("[fe80::1]:5683".parse().unwrap());
        assert!(hint.contains("[fe80::1%IFACE]:5683"), "{hint}");
        assert_eq!(zone_hint("[::1]:5683".parse().unwrap()), "");
        assert_eq!(zone_hint("127.0.0.1:5683".parse().unwrap()), "");
    }
}

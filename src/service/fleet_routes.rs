//! The fleet's routes: `POST /updates/report` and `GET /status`, and what
//! the lookup reads of its query for the fleet (`ep=`, `delta=`). Kept
//! apart from `routes`, whose `Ctx` they extend, so that the fleet's
//! requests are read in one place.

use super::routes::{Ctx, Reply};
use super::{device_name, error, Diagnostic, Failure, Outcome, Request};
use crate::fleet::report::{Report, ReportError};
use crate::fleet::{DeviceName, Note, StatusFormat, Target};
use coap_lite::{CoapOption, ResponseType};

impl<'s> Ctx<'s, '_, '_> {
    /// The `delta=FORMAT` of the request's query, if any: 1 to 16
    /// lowercase letters and digits, else 4.00.
    pub(super) fn delta(&self) -> Result<Option<&[u8]>, Failure> {
        let mut found = None;
        for pair in self.msg.query.as_slice() {
            if let Some(value) = pair.strip_prefix(b"delta=") {
                let ok = (1..=16).contains(&value.len())
                    && value
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !ok {
                    return Err(error(
                        ResponseType::BadRequest,
                        "delta must be a patch format: 1 to 16 of a-z 0-9",
                    ));
                }
                if found.replace(value).is_some() {
                    return Err(error(ResponseType::BadRequest, "delta given twice"));
                }
            }
        }
        Ok(found)
    }

    /// The `ep=NAME` of the request's query, if any.
    pub(super) fn ep(&self) -> Result<Option<DeviceName>, Failure> {
        let mut found = None;
        for pair in self.msg.query.as_slice() {
            if let Some(value) = pair.strip_prefix(b"ep=") {
                let name = DeviceName::parse(value).ok_or(error(
                    ResponseType::BadRequest,
                    "ep must be 1 to 63 of A-Z a-z 0-9 . _ : -",
                ))?;
                if found.replace(name).is_some() {
                    return Err(error(ResponseType::BadRequest, "ep given twice"));
                }
            }
        }
        Ok(found)
    }

    /// The device's name: `ep`, else its coaps identity, else the name a
    /// lookup from its address gave, else its address.
    pub(super) fn name(&self, ep: Option<DeviceName>) -> DeviceName {
        let request = Request {
            identity: self.identity,
            ..Request::new(self.peer, 0, &[])
        };
        device_name(self.fleet, ep, &request)
    }

    /// `POST /updates/report`: the query form (empty payload) or CBOR
    /// (Content-Format 60); 2.04 Changed, and the fleet notes it once the
    /// answer is sent.
    pub(super) fn report(&mut self, out: &mut [u8]) -> Reply<'s> {
        if self.msg.query.overflowed() {
            return Err(error(ResponseType::BadRequest, "too many query options"));
        }
        let bad = |e| Failure::Error(ResponseType::BadRequest, Diagnostic::Report(e));
        let report = match (self.msg.content_format, self.msg.payload) {
            (Some(60), payload) => Report::from_cbor(payload).map_err(bad)?,
            (Some(0) | None, []) => Report::from_query(self.msg.query.as_slice()).map_err(bad)?,
            (None, _) => return Err(bad(ReportError::PayloadWithoutFormat)),
            (Some(_), _) => {
                return Err(error(
                    ResponseType::UnsupportedContentFormat,
                    "a report is a query (no payload) or CBOR (Content-Format 60)",
                ))
            }
        };
        if let Some(pid) = report.pid {
            self.authorize(pid)?;
        }
        let target = match (report.pid, report.fw_type, report.target) {
            (Some(pid), Some(fw_type), Some(version)) => {
                let image = self
                    .catalog
                    .newest(pid, fw_type)
                    .filter(|i| i.version == version);
                let image = image.or_else(|| {
                    self.catalog.images().iter().find(|i| {
                        i.version == version && i.name.fw_type == fw_type && *i.name.pid == *pid
                    })
                });
                Some(image.map(Target::of).ok_or(error(
                    ResponseType::BadRequest,
                    "no image of this pid, type and target version",
                ))?)
            }
            _ => None,
        };
        self.note = Some(Note::Report {
            name: self.name(report.ep),
            running: report.version,
            target,
            state: report.state,
            result: report.result,
        });
        let e = self.emitter(ResponseType::Changed, out)?;
        Ok((e.payload(&[])?, Outcome::Content))
    }

    /// `GET /status` and `GET /status?ep=NAME`: on plain CoAP from
    /// loopback and link-local sources and the `--status-from` prefixes
    /// only, over coaps to identities with the status right only,
    /// whatever their address (4.03 otherwise); in the format Accept asks
    /// for (4.06 for one it cannot).
    pub(super) fn status(&mut self, out: &mut [u8]) -> Reply<'s> {
        if !self.status_open {
            return Err(error(
                ResponseType::Forbidden,
                if self.authorization.is_some() {
                    "/status over coaps is open to identities with @status in the key file"
                } else {
                    "/status is open to loopback and link-local sources (see --status-from)"
                },
            ));
        }
        self.read_status = true;
        let format = StatusFormat::from_accept(self.msg.accept).ok_or(error(
            ResponseType::NotAcceptable,
            "status is text (0), JSON (50) or CBOR (60)",
        ))?;
        let body = match self.ep()? {
            Some(name) => self
                .fleet
                .device_status(&name, format)
                .ok_or(error(ResponseType::NotFound, "no device of this name"))?,
            None => self.fleet.status(self.fleet_files, self.catalog, format),
        };
        let etag = crate::hash::fnv1a64(&body).to_be_bytes();
        let (block, range) = self.block_for(body.len())?;
        let chunk = body.get(range).ok_or(Failure::Overflow)?;
        let mut e = self.emitter(ResponseType::Content, out)?;
        e.option(CoapOption::ETag.into(), &etag)?;
        // Observable (RFC 7641): compared again once per rescan period
        // when the fleet changed.
        self.observe_option(&mut e, u64::from_be_bytes(etag))?;
        e.option_uint(
            CoapOption::ContentFormat.into(),
            u32::from(format.content_format()),
        )?;
        self.max_age_option(&mut e)?;
        e.option_block(CoapOption::Block2.into(), block)?;
        if block.num == 0 || self.msg.size2.is_some() {
            let size = u32::try_from(body.len()).map_err(|_| Failure::Overflow)?;
            e.option_uint(CoapOption::Size2.into(), size)?;
        }
        Ok((e.payload(chunk)?, Outcome::Content))
    }
}

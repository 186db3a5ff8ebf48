//! The operator's view, `GET /status` and `GET /status?ep=NAME`: per image
//! its rollout (share, canaries, paused or not and why) and how many
//! devices are where; per device its last state, versions, result and
//! when. Text by default, JSON (Accept 50) or CBOR (Accept 60).
//!
//! Built per request into a `Vec` (the view is for operators, from the
//! addresses `/status` admits, and bounded by the images and the device
//! table); nothing here touches a socket or a clock.

use super::cbor::Encoder;
use super::policy::SHARE_SCALE;
use super::{Device, DeviceName, Fleet, FleetFiles, State};
use crate::catalog::{Catalog, Image};
use crate::firmware::VersionText;
use crate::logfmt::Timestamp;
use core::fmt::Write as _;
use std::collections::HashMap;

/// The representation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// text/plain (0), the default.
    Text,
    /// application/json (50).
    Json,
    /// application/cbor (60).
    Cbor,
}

impl StatusFormat {
    /// The format an Accept option asks for; `None` for one the view does
    /// not have (4.06).
    pub fn from_accept(accept: Option<u16>) -> Option<StatusFormat> {
        match accept {
            None | Some(0) => Some(StatusFormat::Text),
            Some(50) => Some(StatusFormat::Json),
            Some(60) => Some(StatusFormat::Cbor),
            Some(_) => None,
        }
    }

    /// Its Content-Format number.
    pub fn content_format(self) -> u16 {
        match self {
            StatusFormat::Text => 0,
            StatusFormat::Json => 50,
            StatusFormat::Cbor => 60,
        }
    }
}

/// One image's line of the view.
struct ImageView<'a> {
    image: &'a Image,
    share: u32,
    canaries: Vec<&'a str>,
    paused: Option<String>,
    policy: bool,
    policy_error: Option<String>,
    counts: [u32; 7],
    outcomes: (u32, u32),
}

/// `share` hundredths of a percent as text: `10`, `12.5`, `0.25`.
fn percent(share: u32) -> String {
    let (whole, frac) = (share / 100, share % 100);
    match frac {
        0 => format!("{whole}"),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Fleet {
    fn image_views<'a>(
        &'a self,
        files: &'a FleetFiles,
        catalog: &'a Catalog,
    ) -> Vec<ImageView<'a>> {
        let mut counts: HashMap<u32, [u32; 7]> = HashMap::new();
        for (_, d) in self.devices() {
            if let Some(t) = d.target {
                let slot = counts.entry(t.image).or_default();
                if let Some(n) = State::ALL
                    .iter()
                    .position(|&s| s == d.state)
                    .and_then(|i| slot.get_mut(i))
                {
                    *n += 1;
                }
            }
        }
        catalog
            .images()
            .iter()
            .map(|image| {
                let file = files.policy(image.id);
                let generation = file.map(|f| f.policy.generation);
                let outcomes = self
                    .rollouts
                    .get(&image.id)
                    .filter(|r| !r.paused || Some(r.generation) == generation)
                    .map_or((0, 0), |r| (r.successes, r.failures));
                ImageView {
                    image,
                    share: file.map_or(SHARE_SCALE, |f| f.policy.share),
                    canaries: file.map_or(Vec::new(), |f| {
                        f.policy.canaries.iter().map(DeviceName::as_str).collect()
                    }),
                    paused: self.pause(files, image.id).map(|p| p.to_string()),
                    policy: file.is_some(),
                    policy_error: file.and_then(|f| f.error.as_ref()).map(|e| e.to_string()),
                    counts: counts.get(&image.id).copied().unwrap_or_default(),
                    outcomes,
                }
            })
            .collect()
    }

    /// The whole view of `catalog`'s images under the policies of `files`,
    /// in `format`.
    pub fn status(&self, files: &FleetFiles, catalog: &Catalog, format: StatusFormat) -> Vec<u8> {
        let views = self.image_views(files, catalog);
        match format {
            StatusFormat::Text => {
                let mut out = String::new();
                let _ = writeln!(out, "devices known: {}", self.device_count());
                for v in &views {
                    let _ = writeln!(
                        out,
                        "{} id {} version {}",
                        v.image.file_name,
                        v.image.id_str(),
                        VersionText(v.image.version)
                    );
                    let _ = write!(out, "  rollout: ");
                    if v.policy {
                        let _ = write!(out, "{}% of devices", percent(v.share));
                        if !v.canaries.is_empty() {
                            let _ = write!(out, ", canaries {}", v.canaries.join(" "));
                        }
                    } else {
                        out.push_str("no policy file, every device");
                    }
                    match &v.paused {
                        Some(why) => {
                            let _ = writeln!(out, "; paused ({why})");
                        }
                        None => out.push_str("; running\n"),
                    }
                    if let Some(e) = &v.policy_error {
                        let _ = writeln!(out, "  policy file refused: {e}");
                    }
                    let _ = write!(out, "  devices:");
                    for (state, n) in State::ALL.iter().zip(v.counts).skip(1) {
                        let _ = write!(out, " {} {n}", state.name());
                    }
                    let _ = writeln!(
                        out,
                        "; outcomes counted: {} updated, {} failed",
                        v.outcomes.0, v.outcomes.1
                    );
                }
                out.into_bytes()
            }
            StatusFormat::Json => {
                let mut out = format!("{{\"devices\":{},\"images\":[", self.device_count());
                for (i, v) in views.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"file\":");
                    json_string(&mut out, &v.image.file_name);
                    let _ = write!(
                        out,
                        ",\"id\":\"{}\",\"version\":\"{}\",\"policy\":{},\"percent\":{},\"canaries\":[",
                        v.image.id_str(),
                        VersionText(v.image.version),
                        v.policy,
                        percent(v.share)
                    );
                    for (j, c) in v.canaries.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        json_string(&mut out, c);
                    }
                    let _ = write!(out, "],\"paused\":{},\"reason\":", v.paused.is_some());
                    match &v.paused {
                        Some(why) => json_string(&mut out, why),
                        None => out.push_str("null"),
                    }
                    for (state, n) in State::ALL.iter().zip(v.counts).skip(1) {
                        let _ = write!(out, ",\"{}\":{n}", state.name());
                    }
                    let _ = write!(
                        out,
                        ",\"successes\":{},\"failures\":{}}}",
                        v.outcomes.0, v.outcomes.1
                    );
                }
                out.push_str("]}");
                out.into_bytes()
            }
            StatusFormat::Cbor => {
                let mut e = Encoder::default();
                e.map(2);
                e.text("devices");
                e.uint(self.device_count() as u64);
                e.text("images");
                e.array(views.len());
                for v in &views {
                    e.map(8 + 6 + 2);
                    e.text("file");
                    e.text(&v.image.file_name);
                    e.text("id");
                    e.text(v.image.id_str());
                    e.text("version");
                    e.text(&VersionText(v.image.version).to_string());
                    e.text("policy");
                    e.bool(v.policy);
                    e.text("percent");
                    e.text(&percent(v.share));
                    e.text("canaries");
                    e.array(v.canaries.len());
                    for c in &v.canaries {
                        e.text(c);
                    }
                    e.text("paused");
                    e.bool(v.paused.is_some());
                    e.text("reason");
                    match &v.paused {
                        Some(why) => e.text(why),
                        None => e.null(),
                    }
                    for (state, n) in State::ALL.iter().zip(v.counts).skip(1) {
                        e.text(state.name());
                        e.uint(u64::from(n));
                    }
                    e.text("successes");
                    e.uint(u64::from(v.outcomes.0));
                    e.text("failures");
                    e.uint(u64::from(v.outcomes.1));
                }
                e.out
            }
        }
    }

    /// One device's view in `format`, `None` when it is not known.
    pub fn device_status(&self, name: &DeviceName, format: StatusFormat) -> Option<Vec<u8>> {
        let d: Device = *self.device(name)?;
        let version = |v: Option<u32>| v.map(|v| VersionText(v).to_string());
        let running = version(d.running);
        let target = version(d.target.map(|t| t.version));
        let image = d.target.map(|t| format!("{:08x}", t.image));
        let changed = Timestamp {
            unix_ms: d.changed_unix_ms,
        }
        .to_string();
        let seen = Timestamp {
            unix_ms: d.seen_unix_ms,
        }
        .to_string();
        let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
        Some(match format {
            StatusFormat::Text => format!(
                "device {name} state {} result {}{} running {} target {} image {} downloads {} \
                 changed {changed} seen {seen}\n",
                d.state.name(),
                d.result,
                if d.inferred { " (inferred)" } else { "" },
                dash(&running),
                dash(&target),
                dash(&image),
                d.downloads,
            )
            .into_bytes(),
            StatusFormat::Json => {
                let opt = |s: &Option<String>| {
                    s.as_ref()
                        .map_or_else(|| "null".to_owned(), |s| format!("\"{s}\""))
                };
                format!(
                    "{{\"ep\":\"{name}\",\"state\":\"{}\",\"result\":{},\"inferred\":{},\
                     \"running\":{},\"target\":{},\"image\":{},\"downloads\":{},\
                     \"changed\":\"{changed}\",\"seen\":\"{seen}\"}}",
                    d.state.name(),
                    d.result,
                    d.inferred,
                    opt(&running),
                    opt(&target),
                    opt(&image),
                    d.downloads
                )
                .into_bytes()
            }
            StatusFormat::Cbor => {
                let mut e = Encoder::default();
                e.map(10);
                e.text("ep");
                e.text(name.as_str());
                e.text("state");
                e.text(d.state.name());
                e.text("result");
                e.uint(u64::from(d.result));
                e.text("inferred");
                e.bool(d.inferred);
                for (key, value) in [
                    ("running", &running),
                    ("target", &target),
                    ("image", &image),
                ] {
                    e.text(key);
                    match value {
                        Some(v) => e.text(v),
                        None => e.null(),
                    }
                }
                e.text("downloads");
                e.uint(u64::from(d.downloads));
                e.text("changed");
                e.text(&changed);
                e.text("seen");
                e.text(&seen);
                e.out
            }
        })
    }
}

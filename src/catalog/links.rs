//! The `/.well-known/core` links (RFC 6690) of the catalog: one prebuilt string per link, and
//! the query filters of RFC 6690 §4.1 that select links without building anything per request.
//!
//! This module builds and matches link text; it never reads a file or writes a CoAP message.

use coap_lite::link_format::{
    LinkFormatWrite, LINK_ATTR_CONTENT_FORMAT, LINK_ATTR_MAXIMUM_SIZE_ESTIMATE,
    LINK_ATTR_RESOURCE_TYPE, LINK_ATTR_TITLE,
};
use coap_lite::ContentFormat;

use super::Image;

/// Path of the resource that lists and finds images; the first link of the discovery body.
pub(crate) const UPDATES_PATH: &str = "/updates";

/// Resource type (`rt`) of [`UPDATES_PATH`] in the discovery body.
pub(crate) const RT_UPDATES: &str = "fw.updates";

/// Resource type (`rt`) of each image resource `/updates/{id}` in the discovery body.
pub(crate) const RT_IMAGE: &str = "fw.image";

/// One link of the /.well-known/core body (RFC 6690), kept apart so that
/// query filters can select links without rebuilding strings per request.
#[derive(Debug)]
pub struct CoreLink {
    /// The whole link as written in the body, e.g.
    /// `</updates/e40c292c>;rt="fw.image";ct=42;sz=3;title="a.fmu"`.
    pub text: Vec<u8>,
    /// The link target between `<` and `>`, e.g. `/updates/e40c292c`.
    target: Box<[u8]>,
    /// The attributes of the link, names as written, values unquoted and unescaped.
    attrs: Vec<(&'static str, Box<[u8]>)>,
}

impl CoreLink {
    pub(crate) fn new(target: &str, attrs: Vec<(&'static str, AttrValue)>) -> CoreLink {
        let mut text = String::new();
        let mut writer = LinkFormatWrite::new(&mut text);
        let mut link = writer.link(target);
        for (name, value) in &attrs {
            link = match value {
                AttrValue::Quoted(s) => link.attr_quoted(name, s),
                AttrValue::Number(n) => link.attr_u32(name, *n),
            };
        }
        // Writing into a String cannot fail, so there is no error to report.
        let _ = link.finish();
        CoreLink {
            text: text.into_bytes(),
            target: target.as_bytes().into(),
            attrs: attrs
                .into_iter()
                .map(|(name, value)| {
                    let raw = match value {
                        AttrValue::Quoted(s) => s.into_bytes(),
                        AttrValue::Number(n) => n.to_string().into_bytes(),
                    };
                    (name, raw.into_boxed_slice())
                })
                .collect(),
        }
    }

    /// RFC 6690 §4.1 filter: whether this link passes the query `query`, one Uri-Query value
    /// `name=value` or `name=prefix*`.
    ///
    /// - `href` compares with the link target (`/updates/e40c292c`).
    /// - `rt`, `if`, `rel` and `ct` hold space-separated values (RFC 6690 §3.1, RFC 7252
    ///   §7.2.1): the link passes if any one token matches.
    /// - A value ending in `*` is a prefix match (`rt=fw.*`, `title=OTA-*`; `rt=*` passes
    ///   every link that has an `rt`); otherwise the match is exact, byte for byte, on the
    ///   unquoted attribute value (`sz=3` passes, `sz=03` does not).
    /// - Attribute names compare ASCII case-insensitively.
    /// - A query without `=`, or naming an attribute the link lacks, does not match.
    ///
    /// Allocates nothing: it runs once per link for every filtered discovery request.
    pub fn matches(&self, query: &[u8]) -> bool {
        let Some(eq) = query.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (name, value) = (&query[..eq], &query[eq + 1..]);
        let pattern = match value.strip_suffix(b"*") {
            Some(prefix) => Pattern::Prefix(prefix),
            None => Pattern::Exact(value),
        };
        if name.eq_ignore_ascii_case(b"href") {
            return pattern.matches(&self.target);
        }
        let multi = [b"rt".as_slice(), b"if", b"rel", b"ct"]
            .iter()
            .any(|m| name.eq_ignore_ascii_case(m));
        self.attrs
            .iter()
            .filter(|(attr, _)| name.eq_ignore_ascii_case(attr.as_bytes()))
            .any(|(_, attr_value)| {
                if multi {
                    attr_value
                        .split(|&b| b == b' ')
                        .filter(|token| !token.is_empty())
                        .any(|token| pattern.matches(token))
                } else {
                    pattern.matches(attr_value)
                }
            })
    }
}

pub(crate) enum AttrValue {
    Quoted(String),
    Number(u32),
}

enum Pattern<'a> {
    Exact(&'a [u8]),
    Prefix(&'a [u8]),
}

impl Pattern<'_> {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Pattern::Exact(exact) => value == *exact,
            Pattern::Prefix(prefix) => value.starts_with(prefix),
        }
    }
}

/// The parts of the discovery body in order: the links with `,` between.
pub(super) fn joined(links: &[CoreLink]) -> impl Iterator<Item = &[u8]> {
    links
        .iter()
        .enumerate()
        .flat_map(|(i, link)| [if i > 0 { &b","[..] } else { &[][..] }, &link.text[..]])
}

pub(super) fn image_link(image: &Image) -> CoreLink {
    let target = format!("{UPDATES_PATH}/{}", image.id_str());
    // Images are at most MAX_IMAGE_LEN = u32::MAX bytes, so the length always fits.
    let size = u32::try_from(image.bytes.len()).unwrap_or(u32::MAX);
    let ct = u32::try_from(usize::from(ContentFormat::ApplicationOctetStream)).unwrap_or(42);
    CoreLink::new(
        &target,
        vec![
            (
                LINK_ATTR_RESOURCE_TYPE,
                AttrValue::Quoted(RT_IMAGE.to_owned()),
            ),
            (LINK_ATTR_CONTENT_FORMAT, AttrValue::Number(ct)),
            (LINK_ATTR_MAXIMUM_SIZE_ESTIMATE, AttrValue::Number(size)),
            (LINK_ATTR_TITLE, AttrValue::Quoted(image.file_name.clone())),
        ],
    )
}

/// The first link of the discovery body: `</updates>;rt="fw.updates"`.
pub(super) fn updates_link() -> CoreLink {
    CoreLink::new(
        UPDATES_PATH,
        vec![(
            LINK_ATTR_RESOURCE_TYPE,
            AttrValue::Quoted(RT_UPDATES.to_owned()),
        )],
    )
}

//! SERVER and PATH arguments: [`Target`] (where to, and how) and
//! [`Resource`] (the Uri-Path and Uri-Query options).

use core::fmt;

/// The CoAP default port (RFC 7252 §6.1).
pub(crate) const DEFAULT_PORT: u16 = 5683;
/// The coaps default port (RFC 7252 §6.2).
pub(crate) const DEFAULT_SECURE_PORT: u16 = 5684;

/// Why a SERVER or PATH argument cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriError {
    /// A scheme other than `coap://` and `coaps://`.
    Scheme,
    /// No host.
    EmptyHost,
    /// Port not a decimal 1..=65535.
    Port,
    /// `user@host`: CoAP URIs have no user information.
    UserInfo,
    /// An IPv6 address without brackets (`::1:5683` is ambiguous).
    UnbracketedIpv6,
    /// `[...]` that is not an IPv6 address, or text after `]` other than a
    /// port.
    BadIpv6,
    /// A `%` not followed by two hex digits.
    Percent,
    /// A path segment or query item longer than 255 bytes (the longest
    /// Uri-Path or Uri-Query option, RFC 7252 §5.10).
    SegmentTooLong,
    /// A path given in the `host:port` form, which has none.
    PathWithoutScheme,
    /// `[fe80::1%]`, or `%25` with nothing after it in a URI.
    EmptyZone,
    /// A zone after an IPv4 address or a host name: only IPv6 addresses
    /// have zones, and only in brackets.
    ZoneWithoutIpv6,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UriError::Scheme => "only coap:// and coaps:// URIs are supported",
            UriError::EmptyHost => "no host",
            UriError::Port => "port must be a number 1..65535",
            UriError::UserInfo => "CoAP URIs have no user@ part",
            UriError::UnbracketedIpv6 => "write IPv6 addresses in brackets, e.g. [::1]:5683",
            UriError::BadIpv6 => "not an IPv6 address in [...], or text after ] that is not :PORT",
            UriError::Percent => "% must be followed by two hex digits",
            UriError::SegmentTooLong => "a path segment or query item is longer than 255 bytes",
            UriError::PathWithoutScheme => "a path needs the coap://host:port/path form",
            UriError::EmptyZone => {
                "no zone after %: write [fe80::1%eth0]:5683, or coap://[fe80::1%25eth0]/ in a URI"
            }
            UriError::ZoneWithoutIpv6 => {
                "a zone (%IFACE) goes with an IPv6 address in brackets, e.g. [fe80::1%eth0]:5683"
            }
        })
    }
}

/// A server to talk to, and the resource when the argument was a URI with
/// a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host name or IP address, without brackets or zone.
    pub(crate) host: String,
    /// The zone of an IPv6 literal (`[fe80::1%eth0]`): an interface name
    /// or decimal index, as written (in a URI, after the RFC 6874 `%25`,
    /// percent-decoded). Never sent: it is the scope id of the address
    /// sent to, which the socket side looks up.
    pub(crate) zone: Option<String>,
    /// UDP port.
    pub(crate) port: u16,
    /// The URI's path and query, `None` when it had neither (or just `/`).
    pub(crate) resource: Option<Resource>,
    /// A `coaps://` URI: CoAP over DTLS.
    pub(crate) secure: bool,
}

impl Target {
    /// Parses `host:port`, `[v6]:port`, `host`, `[v6]` or
    /// `coap://host[:port][/path][?query]`; the port defaults to 5683,
    /// 5684 for `coaps://`.
    /// An IPv6 address may carry a zone: `[fe80::1%eth0]:5683`, and in a
    /// URI `coap://[fe80::1%25eth0]/` (RFC 6874), or leniently
    /// `coap://[fe80::1%eth0]/` as browsers and libcoap take it.
    ///
    /// # Errors
    /// [`UriError`] naming what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Target, UriError> {
        let scheme = split_scheme(text)?;
        let is_uri = scheme.is_some();
        let secure = matches!(scheme, Some((true, _)));
        let (authority, rest) = match scheme {
            Some((_, after)) => {
                // A fragment is never sent (RFC 7252 §6.4 step 7).
                let after = after.split('#').next().unwrap_or("");
                let end = after.find(['/', '?']).unwrap_or(after.len());
                after.split_at(end)
            }
            None if text.contains(['/', '?']) => return Err(UriError::PathWithoutScheme),
            None => (text, ""),
        };
        if authority.contains('@') {
            return Err(UriError::UserInfo);
        }
        let default_port = if secure {
            DEFAULT_SECURE_PORT
        } else {
            DEFAULT_PORT
        };
        let (host, zone, port) = split_host_port(authority, is_uri, default_port)?;
        let resource = Resource::parse(rest)?;
        let resource = (!resource.is_root()).then_some(resource);
        Ok(Target {
            host: host.to_owned(),
            zone,
            port,
            resource,
            secure,
        })
    }

    /// `host:port`, with brackets around an IPv6 address and its zone
    /// (`[fe80::1%eth0]:5683`).
    pub(crate) fn authority(&self) -> String {
        if let Some(zone) = &self.zone {
            format!("[{}%{zone}]:{}", self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `Some((secure, rest))` after `coap://` or `coaps://` (any case),
/// `None` without a scheme.
fn split_scheme(text: &str) -> Result<Option<(bool, &str)>, UriError> {
    let Some(colon) = text.find("://") else {
        return Ok(None);
    };
    let (scheme, rest) = text.split_at(colon);
    let rest = rest.get(3..).unwrap_or("");
    if scheme.eq_ignore_ascii_case("coap") {
        Ok(Some((false, rest)))
    } else if scheme.eq_ignore_ascii_case("coaps") {
        Ok(Some((true, rest)))
    } else {
        Err(UriError::Scheme)
    }
}

/// `host[:port]` → (host, zone, port). `is_uri`: the authority of a
/// `coap://` URI, where the zone is written `%25ZONE` (RFC 6874).
fn split_host_port(
    authority: &str,
    is_uri: bool,
    default_port: u16,
) -> Result<(&str, Option<String>, u16), UriError> {
    let (host, zone, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or(UriError::BadIpv6)?;
        let (host, zone) = match inside.split_once('%') {
            Some((host, zone)) => (host, Some(parse_zone(zone, is_uri)?)),
            None => (inside, None),
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UriError::BadIpv6);
        }
        match after {
            "" => (host, zone, None),
            _ => (
                host,
                zone,
                Some(after.strip_prefix(':').ok_or(UriError::BadIpv6)?),
            ),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => return Err(UriError::UnbracketedIpv6),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        // `127.0.0.1%lo`: a zone where there can be none (and in a URI
        // not a percent-encoded name either: an address is no reg-name).
        if let Some((ip, _)) = host.split_once('%') {
            if ip.parse::<std::net::IpAddr>().is_ok() {
                return Err(UriError::ZoneWithoutIpv6);
            }
        }
        (host, None, port)
    };
    if host.is_empty() {
        return Err(UriError::EmptyHost);
    }
    let port = match port {
        // `coap://host:/` has an empty port: the default (RFC 3986 §3.2.3).
        None | Some("") => default_port,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(UriError::Port)?,
    };
    Ok((host, zone, port))
}

/// The zone after the `%` of `[IPv6%...]`. In a URI the `%` is itself
/// percent-encoded (`%25eth0`, RFC 6874 §2) and the zone may hold
/// percent-encoded bytes; a bare `%eth0` is taken too, as browsers and
/// libcoap do. Outside URIs the zone is taken as written.
fn parse_zone(text: &str, is_uri: bool) -> Result<String, UriError> {
    let zone = if is_uri {
        let encoded = match text.strip_prefix("25") {
            Some("") => return Err(UriError::EmptyZone),
            Some(rfc6874) => rfc6874,
            None => text,
        };
        String::from_utf8(percent_decode(encoded)?).map_err(|_| UriError::BadIpv6)?
    } else {
        text.to_owned()
    };
    if zone.is_empty() {
        return Err(UriError::EmptyZone);
    }
    Ok(zone)
}

/// A resource as Uri-Path and Uri-Query option values (percent-decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Resource {
    /// One value per path segment.
    pub(crate) path: Vec<Vec<u8>>,
    /// One value per `&`-separated query item.
    pub(crate) query: Vec<Vec<u8>>,
}

impl Resource {
    /// Parses `/a/b?x=1&y=2` (a missing leading `/` is assumed): every
    /// segment and query item percent-decoded, as RFC 7252 §6.4 steps 8-9.
    ///
    /// # Errors
    /// [`UriError::Percent`] or [`UriError::SegmentTooLong`].
    pub(crate) fn parse(text: &str) -> Result<Resource, UriError> {
        let (path, query) = text.split_once('?').unwrap_or((text, ""));
        let path = path.strip_prefix('/').unwrap_or(path);
        let mut resource = Resource::default();
        if !path.is_empty() {
            for segment in path.split('/') {
                resource.path.push(percent_decode(segment)?);
            }
        }
        if !query.is_empty() {
            for item in query.split('&') {
                resource.query.push(percent_decode(item)?);
            }
        }
        Ok(resource)
    }

    /// `/updates`, where devices ask for updates.
    pub(crate) fn updates() -> Resource {
        Resource {
            path: vec![b"updates".to_vec()],
            query: Vec::new(),
        }
    }

    /// `/updates/{id}`, one image.
    pub(crate) fn image(id: &[u8]) -> Resource {
        Resource {
            path: vec![b"updates".to_vec(), id.to_vec()],
            query: Vec::new(),
        }
    }

    /// True for `/` (or nothing): no Uri-Path, no Uri-Query.
    pub(crate) fn is_root(&self) -> bool {
        self.path.is_empty() && self.query.is_empty()
    }
}

impl fmt::Display for Resource {
    /// The resource as a path for messages (not re-encoded).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str("/")?;
        }
        for segment in &self.path {
            write!(f, "/{}", String::from_utf8_lossy(segment))?;
        }
        for (i, item) in self.query.iter().enumerate() {
            let separator = if i == 0 { '?' } else { '&' };
            write!(f, "{separator}{}", String::from_utf8_lossy(item))?;
        }
        Ok(())
    }
}

fn percent_decode(text: &str) -> Result<Vec<u8>, UriError> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(|h| char::from(h).to_digit(16));
            let lo = bytes.next().and_then(|l| char::from(l).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(UriError::Percent),
            }
        } else {
            out.push(b);
        }
    }
    if out.len() > 255 {
        return Err(UriError::SegmentTooLong);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{emit_get, Get};
    use coap_lite::CoapOption;

    fn target(text: &str) -> Target {
        Target::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn host_port_forms_default_to_port_5683() {
        let t = target("127.0.0.1:5684");
        assert_eq!(
            (t.host.as_str(), t.port, t.resource),
            ("127.0.0.1", 5684, None)
        );
        let t = target("[::1]:61616");
        assert_eq!((t.host.as_str(), t.port), ("::1", 61616));
        assert_eq!(t.authority(), "[::1]:61616");
        assert_eq!(target("localhost").port, DEFAULT_PORT);
        assert_eq!(target("[fe80::1]").port, DEFAULT_PORT);
        assert_eq!(target("example.org:1").authority(), "example.org:1");
    }

    #[test]
    fn coap_uri_gives_host_port_and_resource() {
        let t = target("coap://[::1]:5683/.well-known/core");
        assert_eq!((t.host.as_str(), t.port), ("::1", 5683));
        let r = t.resource.unwrap();
        assert_eq!(r.path, vec![b".well-known".to_vec(), b"core".to_vec()]);
        assert!(r.query.is_empty());

        let t = target("COAP://example.org/updates?pid=A%20B&type=APP#frag");
        assert_eq!((t.host.as_str(), t.port), ("example.org", DEFAULT_PORT));
        let r = t.resource.unwrap();
        assert_eq!(r.path, vec![b"updates".to_vec()]);
        assert_eq!(r.query, vec![b"pid=A B".to_vec(), b"type=APP".to_vec()]);
        assert_eq!(r.to_string(), "/updates?pid=A B&type=APP");
    }

    #[test]
    fn coaps_uris_are_secure_with_their_own_default_port() {
        let t = target("coaps://[::1]/updates/x");
        assert!(t.secure);
        assert_eq!(t.port, DEFAULT_SECURE_PORT);
        assert_eq!(t.resource.unwrap().to_string(), "/updates/x");
        let t = target("CoAPs://h:7");
        assert!(t.secure);
        assert_eq!(t.port, 7);
        assert!(!target("coap://h").secure);
        assert!(!target("h:5684").secure);
    }

    #[test]
    fn root_path_or_none_means_no_resource() {
        for text in ["coap://h", "coap://h/", "coap://h:7/", "coap://h:/"] {
            assert_eq!(target(text).resource, None, "{text}");
        }
        assert_eq!(target("coap://h:/").port, DEFAULT_PORT);
        assert_eq!(
            target("coap://h?x").resource.unwrap().query,
            vec![b"x".to_vec()]
        );
    }

    #[test]
    fn bad_server_arguments_say_why() {
        let cases = [
            ("coapss://h", UriError::Scheme),
            ("http://h/", UriError::Scheme),
            ("", UriError::EmptyHost),
            (":5683", UriError::EmptyHost),
            ("coap://", UriError::EmptyHost),
            ("h:0", UriError::Port),
            ("h:65536", UriError::Port),
            ("h:+80", UriError::Port),
            ("h:x", UriError::Port),
            ("::1", UriError::UnbracketedIpv6),
            ("::1:5683", UriError::UnbracketedIpv6),
            ("[::1", UriError::BadIpv6),
            ("[not-v6]:1", UriError::BadIpv6),
            ("[::1]5683", UriError::BadIpv6),
            ("coap://u@h/", UriError::UserInfo),
            ("h:5683/updates", UriError::PathWithoutScheme),
            ("coap://h/%zz", UriError::Percent),
            ("coap://h/%4", UriError::Percent),
        ];
        for (text, expected) in cases {
            assert_eq!(Target::parse(text), Err(expected), "{text}");
        }
        let long = format!("coap://h/{}", "a".repeat(256));
        assert_eq!(Target::parse(&long), Err(UriError::SegmentTooLong));
        let max = format!("coap://h/{}", "a".repeat(255));
        assert!(Target::parse(&max).is_ok());
    }

    #[test]
    fn ipv6_zones_plain_and_in_uris_rfc6874() {
        // (argument, zone, port, path)
        let cases: [(&str, &str, u16, &str); 9] = [
            ("[fe80::1%eth0]:5683", "eth0", 5683, "/"),
            ("[fe80::1%5]:5683", "5", 5683, "/"),
            ("[fe80::1%eth0]", "eth0", DEFAULT_PORT, "/"),
            // Outside URIs the zone is as written (the socket side takes
            // a `25` copied from a URI leniently).
            ("[fe80::1%25eth0]:1", "25eth0", 1, "/"),
            ("coap://[fe80::1%25eth0]:5683/a/b", "eth0", 5683, "/a/b"),
            ("coap://[fe80::1%25eth0]/a?q", "eth0", DEFAULT_PORT, "/a?q"),
            ("coap://[fe80::1%25en%30]/", "en0", DEFAULT_PORT, "/"),
            // Bare `%` in a URI, as browsers and libcoap take it.
            ("coap://[fe80::1%eth0]/a", "eth0", DEFAULT_PORT, "/a"),
            ("coap://[fe80::1%7]:9/", "7", 9, "/"),
        ];
        for (text, zone, port, path) in cases {
            let t = target(text);
            assert_eq!(t.host, "fe80::1", "{text}");
            assert_eq!(t.zone.as_deref(), Some(zone), "{text}");
            assert_eq!(t.port, port, "{text}");
            assert_eq!(t.resource.unwrap_or_default().to_string(), path, "{text}");
        }
        assert_eq!(target("[fe80::1%eth0]").authority(), "[fe80::1%eth0]:5683");
        assert_eq!(
            target("coap://[fe80::1%25wpan0]:7/").authority(),
            "[fe80::1%wpan0]:7"
        );
        assert_eq!(target("[fe80::1]:1").zone, None);
        assert_eq!(target("coap://h/").zone, None);
    }

    #[test]
    fn bad_zones_say_why() {
        let cases = [
            ("[fe80::1%]:5683", UriError::EmptyZone),
            ("[fe80::1%]", UriError::EmptyZone),
            ("coap://[fe80::1%25]/", UriError::EmptyZone),
            ("coap://[fe80::1%]/", UriError::EmptyZone),
            ("coap://[fe80::1%25e%zz]/", UriError::Percent),
            ("[not-v6%eth0]:1", UriError::BadIpv6),
            ("[fe80::1%eth0]5683", UriError::BadIpv6),
            ("[fe80::1%eth0]:0", UriError::Port),
            ("fe80::1%eth0:5683", UriError::UnbracketedIpv6),
            ("127.0.0.1%lo:5683", UriError::ZoneWithoutIpv6),
            ("127.0.0.1%lo", UriError::ZoneWithoutIpv6),
            ("coap://127.0.0.1%25lo/", UriError::ZoneWithoutIpv6),
        ];
        for (text, expected) in cases {
            assert_eq!(Target::parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn a_zoned_literal_sends_no_uri_host_rfc7252_section_6_4() {
        // An IP-literal host is the destination address: no Uri-Host, and
        // the zone, local to this host, goes nowhere on the wire.
        let t = target("coap://[fe80::1%25lo]:5683/.well-known/core");
        let resource = t.resource.unwrap();
        let mut out = [0u8; 128];
        let len = emit_get(&plain(&resource), 1, b"t", None, &mut out).unwrap();
        let packet = coap_lite::Packet::from_bytes(&out[..len]).unwrap();
        assert!(packet.get_option(CoapOption::UriHost).is_none());
        assert!(packet.get_option(CoapOption::UriPort).is_none());
        assert!(!out[..len].windows(2).any(|w| w == b"lo"));
    }

    fn plain(resource: &Resource) -> Get<'_> {
        Get {
            resource,
            payload: &[],
            block2: None,
            size2: None,
            observe: None,
        }
    }

    #[test]
    fn path_is_split_into_options_as_rfc7252_section_6_4() {
        let r = Resource::parse("/a//b%2Fc?x=1&&y").unwrap();
        assert_eq!(r.path, vec![b"a".to_vec(), b"".to_vec(), b"b/c".to_vec()]);
        assert_eq!(r.query, vec![b"x=1".to_vec(), b"".to_vec(), b"y".to_vec()]);
        assert_eq!(Resource::parse("updates").unwrap(), Resource::updates());
        assert!(Resource::parse("/").unwrap().is_root());
        assert!(Resource::parse("").unwrap().is_root());
        assert_eq!(
            Resource::image(b"0d0ad509").to_string(),
            "/updates/0d0ad509"
        );
        assert_eq!(Resource::default().to_string(), "/");
    }
}

//! SPIFFE IDs and trust domain names, validated per the SPIFFE ID specification.
//!
//! The `spiffe` crate's parser (`spiffe::SpiffeId`, `spiffe::TrustDomain`)
//! decides validity; this module adds what the project needs beyond it:
//!
//! - **No normalisation.** The crate accepts `SPIFFE://Example.org/x` and
//!   lowercases it; here an ID is accepted only in the canonical form the
//!   crate would print. The string in a certificate's URI SAN is compared
//!   byte for byte with configured IDs, so two spellings of "the same" ID
//!   must never both parse.
//! - **Reasons.** The crate says "bad trust domain char"; [`InvalidId`] names
//!   the character, the port, the userinfo, the query or the dot segment, so
//!   an operator sees what to fix. Those checks only explain a refusal: an
//!   ID is valid when the crate accepts it and they find nothing.

use std::fmt;
use std::str::FromStr;

/// Maximum length of a SPIFFE ID in bytes (SPIFFE ID spec, "Maximum SPIFFE ID Length").
pub const MAX_ID_LEN: usize = 2048;
/// Maximum length of a trust domain name in bytes (SPIFFE ID spec, "Trust Domain").
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The input was the empty string.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The ID is longer than [`MAX_ID_LEN`] bytes.
    #[error("SPIFFE ID is {len} bytes long, the maximum is {MAX_ID_LEN}")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
    },
    /// The scheme is not exactly `spiffe` (the scheme is case sensitive here).
    #[error("scheme must be \"spiffe://\", got {found:?}")]
    WrongScheme {
        /// What was found before `://`, or the whole input when there is no `://`.
        found: String,
    },
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error("trust domain is {len} bytes long, the maximum is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong {
        /// Actual length in bytes.
        len: usize,
    },
    /// The authority contains a port (`:`).
    #[error("trust domain must not contain a port")]
    HasPort,
    /// The authority contains userinfo (`@`).
    #[error("trust domain must not contain userinfo (\"user@\")")]
    HasUserInfo,
    /// A character outside `[a-z0-9.-_]` in the trust domain (upper case included).
    #[error(
        "trust domain contains {ch:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar {
        /// The offending character.
        ch: char,
    },
    /// A path was given where only a trust domain is expected.
    #[error("a trust domain must not have a path")]
    TrustDomainHasPath,
    /// A query component (`?`) is present.
    #[error("SPIFFE ID must not contain a query (\"?\")")]
    HasQuery,
    /// A fragment component (`#`) is present.
    #[error("SPIFFE ID must not contain a fragment (\"#\")")]
    HasFragment,
    /// Two consecutive slashes in the path.
    #[error("path contains an empty segment (\"//\")")]
    EmptySegment,
    /// The path ends with `/`.
    #[error("path must not end with \"/\"")]
    TrailingSlash,
    /// A `.` or `..` path segment.
    #[error("path contains a relative segment {segment:?}")]
    DotSegment {
        /// `"."` or `".."`.
        segment: String,
    },
    /// A character outside `[A-Za-z0-9.-_]` in the path (percent-encoding included).
    #[error("path contains {ch:?}; only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar {
        /// The offending character.
        ch: char,
    },
    /// Refused by the `spiffe` crate for a reason the checks here do not
    /// name (its message).
    #[error("{0}")]
    Refused(String),
}

fn is_td_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn first_non_ascii_or(s: &str, pred: fn(u8) -> bool) -> Option<char> {
    s.chars().find(|c| !c.is_ascii() || !pred(*c as u8))
}

fn validate_trust_domain(td: &str) -> Result<(), InvalidId> {
    if td.is_empty() {
        return Err(InvalidId::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(InvalidId::TrustDomainTooLong { len: td.len() });
    }
    // userinfo and port are checked before the charset so the error names the URI
    // feature the caller actually used instead of just "bad character".
    if td.contains('@') {
        return Err(InvalidId::HasUserInfo);
    }
    if td.contains(':') {
        return Err(InvalidId::HasPort);
    }
    if let Some(ch) = first_non_ascii_or(td, is_td_char) {
        return Err(InvalidId::BadTrustDomainChar { ch });
    }
    Ok(())
}

/// The project's reading of a SPIFFE ID: the byte offset where its trust
/// domain ends, or the precise reason it is not one.
fn explain_id(s: &str) -> Result<usize, InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(InvalidId::TooLong { len: s.len() });
    }
    let Some(rest) = s.strip_prefix(SCHEME_PREFIX) else {
        let found = match s.find("://") {
            Some(i) => &s[..i],
            None => s,
        };
        return Err(InvalidId::WrongScheme {
            found: found.to_string(),
        });
    };
    if rest.contains('#') {
        return Err(InvalidId::HasFragment);
    }
    if rest.contains('?') {
        return Err(InvalidId::HasQuery);
    }
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    validate_trust_domain(td)?;
    validate_path(path)?;
    Ok(SCHEME_PREFIX.len() + td.len())
}

fn validate_path(path: &str) -> Result<(), InvalidId> {
    if path.is_empty() {
        return Ok(());
    }
    // Callers split at the first '/', so a non-empty path always starts with it.
    let rest = &path[1..];
    if rest.is_empty() {
        return Err(InvalidId::TrailingSlash);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err(if i == last {
                InvalidId::TrailingSlash
            } else {
                InvalidId::EmptySegment
            });
        }
        if *seg == "." || *seg == ".." {
            return Err(InvalidId::DotSegment {
                segment: (*seg).to_string(),
            });
        }
        if let Some(ch) = first_non_ascii_or(seg, is_path_char) {
            return Err(InvalidId::BadPathChar { ch });
        }
    }
    Ok(())
}

/// A validated trust domain name, e.g. `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID
    /// (`spiffe://example.org`, no path).
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() {
            return Err(InvalidId::Empty);
        }
        if s.contains("://") {
            let id = SpiffeId::parse(s)?;
            if !id.path().is_empty() {
                // Accepting one would silently drop the path.
                return Err(InvalidId::TrustDomainHasPath);
            }
            return Ok(TrustDomain(id.trust_domain().to_string()));
        }
        if s.contains('?') {
            return Err(InvalidId::HasQuery);
        }
        if s.contains('#') {
            return Err(InvalidId::HasFragment);
        }
        validate_trust_domain(s)?;
        match spiffe::TrustDomain::new(s) {
            Ok(td) if td.as_str() == s => Ok(TrustDomain(s.to_string())),
            Ok(td) => Err(InvalidId::Refused(format!(
                "trust domain not in canonical form (expected {td})"
            ))),
            Err(e) => Err(InvalidId::Refused(e.to_string())),
        }
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://<td>`), as put in CA certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            td_end: SCHEME_PREFIX.len() + self.0.len(),
            s: format!("{SCHEME_PREFIX}{}", self.0),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated SPIFFE ID, e.g. `spiffe://example.org/ns/prod/sa/node`.
///
/// An empty path (`spiffe://example.org`) is valid and names the trust domain itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    s: String,
    /// Byte offset where the trust domain ends and the path begins.
    td_end: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID (canonical form only, see the module docs).
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let explained = explain_id(s);
        match (spiffe::SpiffeId::new(s), explained) {
            // Both agree, and the crate did not have to normalise anything.
            (Ok(id), Ok(td_end)) if id.to_string() == s => Ok(SpiffeId {
                s: s.to_string(),
                td_end,
            }),
            (_, Err(reason)) => Err(reason),
            (Ok(id), Ok(_)) => Err(InvalidId::Refused(format!(
                "not in canonical form (expected {id})"
            ))),
            (Err(e), Ok(_)) => Err(InvalidId::Refused(e.to_string())),
        }
    }

    /// Builds an ID from a trust domain name and a path (`""` or starting with `/`).
    pub fn from_parts(trust_domain: &str, path: &str) -> Result<Self, InvalidId> {
        if !path.is_empty() && !path.starts_with('/') {
            return Self::parse(&format!("{SCHEME_PREFIX}{trust_domain}/{path}"));
        }
        Self::parse(&format!("{SCHEME_PREFIX}{trust_domain}{path}"))
    }

    /// The trust domain name, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.s[SCHEME_PREFIX.len()..self.td_end]
    }

    /// The path including its leading `/`, or `""` for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.s[self.td_end..]
    }

    /// The full ID, `spiffe://td/path`.
    pub fn as_str(&self) -> &str {
        &self.s
    }

    /// True when this ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &str) -> bool {
        self.trust_domain() == trust_domain
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.s)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.s)
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.s
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = InvalidId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The explanations here and the `spiffe` crate agree on every single
    /// character in each position, so neither one silently widens what parses.
    #[test]
    fn agrees_with_the_spiffe_crate_on_every_ascii_character() {
        for b in 0u8..=127 {
            let c = char::from(b);
            for s in [
                format!("spiffe://ex{c}ample.org/a"),
                format!("spiffe://example.org/a{c}b"),
                format!("spiffe://example.org/{c}"),
                format!("{c}piffe://example.org/a"),
            ] {
                let crate_canonical = spiffe::SpiffeId::new(&s).is_ok_and(|id| id.to_string() == s);
                let here = explain_id(&s).is_ok();
                assert_eq!(here, crate_canonical, "{s:?}");
                assert_eq!(SpiffeId::parse(&s).is_ok(), here, "{s:?}");
            }
        }
    }

    #[test]
    fn normalised_spellings_are_refused_with_a_reason() {
        for s in ["SPIFFE://example.org/a", "spiffe://Example.org/a"] {
            assert!(spiffe::SpiffeId::new(s).is_ok(), "the crate normalises {s}");
            let err = SpiffeId::parse(s).unwrap_err();
            assert!(
                matches!(
                    err,
                    InvalidId::WrongScheme { .. } | InvalidId::BadTrustDomainChar { ch: 'E' }
                ),
                "{s}: {err:?}"
            );
        }
    }
}

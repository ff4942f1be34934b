//! Handshake failures and times in words a user can act on.
//!
//! A refused TLS handshake reaches the user as text: locally as the rustls
//! error quinn reports, remotely as the reason in the peer's QUIC close
//! frame. Both carry our verifiers' [`SvidError`](crate::verify::SvidError)
//! as `[reason_code] message` (its `Debug` form), so either side can say who
//! refused, what was wrong and what to check, without parsing debug output.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which side of a handshake refused the other's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuser {
    /// We refused the peer's certificate.
    Us,
    /// The peer refused ours (or refused us for a reason it sent).
    Peer,
}

/// A handshake failure explained: who refused, why, and what to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// Who refused.
    pub refuser: Refuser,
    /// The stable reason code (`untrusted_issuer`, `expired`, …), when the
    /// refusal came from a SPIFFE verifier or a recognised TLS alert.
    pub code: Option<String>,
    /// What was wrong, as the refusing side said it.
    pub detail: String,
    /// What to check.
    pub hint: &'static str,
}

impl HandshakeFailure {
    /// Explains a refusal from its text: a rustls error (ours) or a close
    /// reason (the peer's). `alert` is the TLS alert number when the QUIC
    /// close carried a crypto error code, used when the text says nothing.
    pub fn from_reason(refuser: Refuser, reason: &str, alert: Option<u8>) -> Self {
        let (code, detail) = match svid_reason(reason) {
            Some((code, detail)) => (Some(code.to_owned()), detail.to_owned()),
            None => match known_rustls(reason).or_else(|| alert.and_then(alert_code)) {
                Some(code) => (Some(code.to_owned()), plain(reason, alert)),
                None => (None, plain(reason, alert)),
            },
        };
        let hint = hint(code.as_deref(), refuser);
        HandshakeFailure {
            refuser,
            code,
            detail,
            hint,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.refuser {
            Refuser::Us => "we refused the node's certificate",
            Refuser::Peer => "the node refused our handshake",
        };
        write!(f, "{who}: {}. {}", self.detail, self.hint)
    }
}

/// `[code] message` inside rustls's `invalid peer certificate: Other(OtherError(…))`.
fn svid_reason(reason: &str) -> Option<(&str, &str)> {
    let start = reason.find('[')?;
    let rest = &reason[start + 1..];
    let end = rest.find(']')?;
    let code = &rest[..end];
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return None;
    }
    let detail = rest[end + 1..].trim_start();
    // The wrapper's closing parentheses are not part of the message.
    let detail = detail.trim_end_matches(')');
    Some((code, detail))
}

/// rustls refusals that happen before our verifier runs.
fn known_rustls(reason: &str) -> Option<&'static str> {
    if reason.contains("peer sent no certificates") || reason.contains("CertificateRequired") {
        Some("no_certificate")
    } else if reason.contains("UnknownIssuer") {
        Some("untrusted_issuer")
    } else if reason.contains("Expired") {
        Some("expired")
    } else {
        None
    }
}

/// The certificate-related TLS alerts (RFC 8446 §6.2).
fn alert_code(alert: u8) -> Option<&'static str> {
    Some(match alert {
        42 | 46 => "bad_certificate",
        45 => "expired",
        48 => "untrusted_issuer",
        116 => "no_certificate",
        _ => return None,
    })
}

fn alert_name(alert: u8) -> &'static str {
    match alert {
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        80 => "internal_error",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "other",
    }
}

fn plain(reason: &str, alert: Option<u8>) -> String {
    let reason = reason.trim();
    match (reason.is_empty(), alert) {
        (true, Some(a)) => format!("TLS alert {} ({a})", alert_name(a)),
        (true, None) => "no reason given".into(),
        (false, Some(a)) => format!("{reason} (TLS alert {})", alert_name(a)),
        (false, None) => reason.to_owned(),
    }
}

fn hint(code: Option<&str>, refuser: Refuser) -> &'static str {
    use Refuser::*;
    match (code.unwrap_or(""), refuser) {
        ("untrusted_issuer", Us) => {
            "The node's certificate chains to a CA that is not in our trust bundle for its trust domain: check the bundle this side uses (the Workload API's, or the `bundle` file) holds the CA of the node's SPIRE server; across trust domains, federate the bundles"
        }
        ("untrusted_issuer", Peer) => {
            "Our certificate chains to a CA the node does not trust: check our SVID comes from the SPIRE server (or development CA) whose bundle the node holds; `slimctl identity show` prints our SPIFFE ID and trust domain"
        }
        ("unknown_trust_domain", Us) => {
            "We hold no trust bundle for the node's trust domain: federate it (add its bundle) or connect to a node of our own trust domain"
        }
        ("unknown_trust_domain", Peer) => {
            "The node holds no trust bundle for our trust domain: federate our bundle on the node's side, or use an identity from a trust domain the node knows"
        }
        ("wrong_trust_domain", Us) => {
            "The node is from a trust domain this client was told not to accept: check the expected server trust domain or SPIFFE ID"
        }
        ("wrong_trust_domain", Peer) => {
            "The node accepts clients only from the listed trust domains: use an identity from one of them, or ask the operator to allow ours"
        }
        ("unexpected_id", _) => {
            "The node presented another SPIFFE ID than the one asked for: check the expected server SPIFFE ID and the address"
        }
        ("expired", Us) => {
            "The node's SVID has expired: its identity source is not rotating it; check the node's /readyz and its log"
        }
        ("expired", Peer) => {
            "Our SVID has expired: check that our SPIFFE agent (Workload API) is rotating it, or issue a new one; `slimctl identity show` prints the expiry"
        }
        ("not_yet_valid", _) => "Check both machines' clocks (NTP)",
        ("no_certificate", Peer) => {
            "The node requires a client certificate (mTLS): give an identity (--workload-api or SPIFFE_ENDPOINT_SOCKET, or --cert/--key/--bundle), or a JWT-SVID if the node allows one"
        }
        ("no_certificate", Us) => {
            "The node presented no certificate: the address may not be a slim node"
        }
        (
            "malformed" | "no_uri_san" | "two_uri_sans" | "not_spiffe" | "ca_as_leaf"
            | "bad_key_usage" | "wrong_usage" | "bad_certificate",
            _,
        ) => {
            "The certificate is not a valid X.509-SVID: issue it from SPIRE (or `slimctl dev-ca issue` for development)"
        }
        ("bad_signature", _) => {
            "The signature does not verify against the trusted CA's key: the CA was probably re-created under the same name; refresh the trust bundle"
        }
        _ => "Run `slimctl identity check --node ADDR` with the same identity for details",
    }
}

/// A time as RFC 3339 in UTC, to the second (`2026-12-06T01:02:03Z`).
pub fn rfc3339(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => rfc3339_secs(d.as_secs()),
        Err(_) => "before 1970-01-01T00:00:00Z".into(),
    }
}

/// [`rfc3339`] of seconds since the Unix epoch.
pub fn rfc3339_secs(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {secs}"))
}

/// How far `t` is from now, for people: `in 3h 59m`, `12s ago`.
pub fn relative(t: SystemTime) -> String {
    let now = SystemTime::now();
    match t.duration_since(now) {
        Ok(d) => format!("in {}", short(d)),
        Err(e) => format!("{} ago", short(e.duration())),
    }
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::SvidError;

    #[test]
    fn our_refusal_names_the_side_the_reason_and_the_bundle() {
        let e = SvidError::UntrustedIssuer {
            td: "acme.example".into(),
            id: "spiffe://acme.example/node/a".into(),
        };
        // What rustls prints (and quinn reports) for a verifier's refusal.
        let text = format!("invalid peer certificate: Other(OtherError({e:?}))");
        let h = HandshakeFailure::from_reason(Refuser::Us, &text, Some(42));
        assert_eq!(h.code.as_deref(), Some("untrusted_issuer"));
        assert_eq!(
            h.detail,
            "the certificate of spiffe://acme.example/node/a is not issued by any CA in the trust bundle for \"acme.example\""
        );
        let s = h.to_string();
        assert!(s.starts_with("we refused the node's certificate: "), "{s}");
        assert!(s.contains("trust bundle"), "{s}");
        assert!(!s.contains("OtherError"), "{s}");
    }

    #[test]
    fn the_peers_refusal_of_an_expired_svid_says_ours_expired() {
        let e = SvidError::Expired {
            not_after: 1_700_000_000,
            now: 1_700_000_060,
        };
        let text = format!("invalid peer certificate: Other(OtherError({e:?}))");
        let h = HandshakeFailure::from_reason(Refuser::Peer, &text, None);
        assert_eq!(h.code.as_deref(), Some("expired"));
        assert!(h.detail.contains("2023-11-14T22:13:20Z"), "{}", h.detail);
        assert!(h.detail.contains("60s before now"), "{}", h.detail);
        assert!(h.to_string().contains("Our SVID has expired"), "{h}");
    }

    #[test]
    fn a_missing_client_certificate_and_a_bare_alert_are_named() {
        let h = HandshakeFailure::from_reason(Refuser::Peer, "peer sent no certificates", None);
        assert_eq!(h.code.as_deref(), Some("no_certificate"));
        assert!(h.hint.contains("requires a client certificate"));
        let h = HandshakeFailure::from_reason(Refuser::Peer, "", Some(48));
        assert_eq!(h.code.as_deref(), Some("untrusted_issuer"));
        assert_eq!(h.detail, "TLS alert unknown_ca (48)");
        let h = HandshakeFailure::from_reason(Refuser::Peer, "something new", None);
        assert_eq!(h.code, None);
        assert!(h.hint.contains("slimctl identity check"));
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert!(relative(SystemTime::now() + Duration::from_secs(7300)).starts_with("in 2h"));
        assert!(relative(SystemTime::now() - Duration::from_secs(30)).ends_with("ago"));
    }
}

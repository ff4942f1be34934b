//! The `[identity]` section shared by the node's and the controller's config
//! files: where a process takes its X.509-SVID from.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{IdentitySourceConfig, SpiffeId};

/// `[identity]` of a config file. Relative paths are resolved by the loader.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Where the SVID comes from: files (default), spire, dev.
    #[serde(default)]
    pub source: IdentitySourceKind,
    /// spire: Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET).
    pub socket: Option<String>,
    /// spire: how long to wait for the first SVID.
    pub initial_timeout_ms: Option<u64>,
    /// dev: the development CA directory (created if missing) …
    pub ca_dir: Option<PathBuf>,
    /// … and the SPIFFE ID to issue from it.
    pub id: Option<String>,
    pub ttl_secs: Option<u64>,
    /// files: directory in the spiffe-helper layout (tls.crt, tls.key,
    /// svid_bundle.pem), watched and reloaded on change.
    pub dir: Option<PathBuf>,
    /// Or the three files individually (not watched).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySourceKind {
    #[default]
    Files,
    Spire,
    Dev,
}

impl IdentitySection {
    /// Whether the section names the static cert/key/bundle triple.
    pub fn is_static_files(&self) -> bool {
        self.source == IdentitySourceKind::Files && self.dir.is_none()
    }

    /// Checks that the keys fit the source; `static_files` says whether the
    /// cert/key/bundle triple is accepted by this process.
    pub fn check(&self, static_files: bool) -> Result<(), String> {
        let some = [&self.cert, &self.key, &self.bundle]
            .iter()
            .filter(|f| f.is_some())
            .count();
        match self.source {
            IdentitySourceKind::Files => match (&self.dir, some) {
                (Some(_), 0) => Ok(()),
                (None, 3) if static_files => Ok(()),
                (Some(_), _) => {
                    Err("identity: give either dir or cert/key/bundle, not both".into())
                }
                (None, _) if static_files => Err(
                    "identity: give dir (spiffe-helper layout) or all of cert, key and bundle"
                        .into(),
                ),
                (None, _) => Err("identity: files needs dir (spiffe-helper layout)".into()),
            },
            IdentitySourceKind::Spire => {
                if self.dir.is_some() || some > 0 || self.ca_dir.is_some() {
                    Err(
                        "identity.source = \"spire\" takes only socket and initial_timeout_ms"
                            .into(),
                    )
                } else {
                    Ok(())
                }
            }
            IdentitySourceKind::Dev => {
                if self.ca_dir.is_none() || self.id.is_none() {
                    Err("identity.source = \"dev\" needs ca_dir and id".into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The identity source the section describes; `None` for the static
    /// cert/key/bundle triple. Call [`check`](Self::check) first.
    pub fn source_config(&self) -> Result<Option<IdentitySourceConfig>, String> {
        use IdentitySourceConfig as S;
        Ok(match self.source {
            IdentitySourceKind::Files => self.dir.clone().map(|dir| S::Files { dir }),
            IdentitySourceKind::Spire => Some(S::Spire {
                socket: self.socket.clone(),
                initial_timeout: Duration::from_millis(self.initial_timeout_ms.unwrap_or(10_000)),
            }),
            IdentitySourceKind::Dev => Some(S::Dev {
                ca_dir: self
                    .ca_dir
                    .clone()
                    .ok_or("identity.source = \"dev\" needs ca_dir")?,
                id: SpiffeId::parse(self.id.as_deref().unwrap_or_default())
                    .map_err(|e| format!("identity.id: {e}"))?,
                ttl: Duration::from_secs(self.ttl_secs.unwrap_or(3600)),
            }),
        })
    }
}

/// What a config's `[identity]` section resolves to without starting
/// anything: for `slim-node --check` and `slim-controller --check`.
#[derive(Debug, Clone)]
pub struct IdentityPreflight {
    /// One line saying where the SVID comes from, for the check's summary.
    pub source: String,
    /// The SVID's SPIFFE ID, when known before start (files, dev).
    pub spiffe_id: Option<SpiffeId>,
    /// The trust domains whose peers this process would accept; `None`
    /// when only the Workload API knows (spire).
    pub trust_domains: Option<Vec<String>>,
    /// The SVID's notAfter, when there is an SVID on disk.
    pub not_after: Option<std::time::SystemTime>,
}

impl IdentitySection {
    /// Reads and verifies what the section names (SVID, key, bundle, or the
    /// development CA) without starting a source. `static_files`: as in
    /// [`check`](Self::check). An SVID that is not valid now is an error
    /// here (the process would start, but nobody could verify it).
    pub fn preflight(&self, static_files: bool) -> Result<IdentityPreflight, String> {
        self.check(static_files)?;
        let from_identity = |source: String, id: crate::Identity| {
            let mut tds: Vec<String> = id.bundles.trust_domains().map(str::to_owned).collect();
            tds.sort();
            if let Err(e) = id.check(rustls::pki_types::UnixTime::now()) {
                return Err(format!(
                    "identity: {source}: the SVID {}: {e}",
                    id.spiffe_id
                ));
            }
            Ok(IdentityPreflight {
                source,
                spiffe_id: Some(id.spiffe_id.clone()),
                trust_domains: Some(tds),
                not_after: Some(id.not_after),
            })
        };
        match self.source {
            IdentitySourceKind::Files => match &self.dir {
                Some(dir) => {
                    let id = crate::Identity::from_files(dir).map_err(|e| {
                        // The shipped configs point at the development identities.
                        let hint = if dir.components().any(|c| c.as_os_str() == "dev-identity") {
                            " (the development identities: run `slimctl dev-ca setup` from \
                             the repository root)"
                        } else {
                            ""
                        };
                        format!("identity: {e}{hint}")
                    })?;
                    from_identity(format!("files in {}", dir.display()), id)
                }
                None => {
                    let (c, k, b) = (
                        self.cert.as_deref().unwrap_or(std::path::Path::new("")),
                        self.key.as_deref().unwrap_or(std::path::Path::new("")),
                        self.bundle.as_deref().unwrap_or(std::path::Path::new("")),
                    );
                    let id = crate::Identity::from_paths(c, k, b)
                        .map_err(|e| format!("identity: {e}"))?;
                    from_identity(format!("static files {}", c.display()), id)
                }
            },
            IdentitySourceKind::Spire => Ok(IdentityPreflight {
                source: format!(
                    "SPIFFE Workload API at {} (not contacted by the check)",
                    self.socket.as_deref().unwrap_or("$SPIFFE_ENDPOINT_SOCKET")
                ),
                spiffe_id: None,
                trust_domains: None,
                not_after: None,
            }),
            IdentitySourceKind::Dev => {
                let ca_dir = self.ca_dir.as_deref().ok_or("identity: dev needs ca_dir")?;
                let id = SpiffeId::parse(self.id.as_deref().unwrap_or_default())
                    .map_err(|e| format!("identity.id: {e}"))?;
                let td = if ca_dir.join(crate::devca::CA_CERT_FILE).exists() {
                    let ca = crate::DevCa::load(ca_dir).map_err(|e| format!("identity: {e}"))?;
                    if ca.trust_domain() != id.trust_domain() {
                        return Err(format!(
                            "identity.id {id} is not in the development CA's trust domain {} ({})",
                            ca.trust_domain(),
                            ca_dir.display()
                        ));
                    }
                    ca.trust_domain().to_owned()
                } else {
                    id.trust_domain().to_owned()
                };
                Ok(IdentityPreflight {
                    source: format!(
                        "development CA in {} (NOT for production)",
                        ca_dir.display()
                    ),
                    spiffe_id: Some(id),
                    trust_domains: Some(vec![td]),
                    not_after: None,
                })
            }
        }
    }
}

/// The trust domain a SPIFFE ID pattern (`spiffe://td/…`, as in policies
/// and the controller's authz) is literal in; `None` if it is no such pattern.
pub fn pattern_trust_domain(pattern: &str) -> Option<&str> {
    let rest = pattern.strip_prefix("spiffe://")?;
    let td = rest.split('/').next().unwrap_or(rest);
    (!td.is_empty()).then_some(td)
}

/// Patterns (with their position) whose trust domain is not among
/// `trusted`: they can never match an authenticated peer.
pub fn foreign_patterns<'a>(
    patterns: impl IntoIterator<Item = &'a str>,
    trusted: &[String],
) -> Vec<(usize, &'a str)> {
    patterns
        .into_iter()
        .enumerate()
        .filter(|(_, p)| pattern_trust_domain(p).is_some_and(|td| !trusted.iter().any(|t| t == td)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> IdentitySection {
        toml::from_str(toml_text).expect("parse")
    }

    #[test]
    fn checks_per_source() {
        assert!(section("dir = \"x\"").check(false).is_ok());
        assert!(
            section("cert = \"c\"\nkey = \"k\"\nbundle = \"b\"")
                .check(true)
                .is_ok()
        );
        assert!(
            section("cert = \"c\"\nkey = \"k\"\nbundle = \"b\"")
                .check(false)
                .is_err()
        );
        assert!(section("dir = \"x\"\ncert = \"c\"").check(true).is_err());
        assert!(section("source = \"spire\"").check(false).is_ok());
        assert!(
            section("source = \"spire\"\ndir = \"x\"")
                .check(false)
                .is_err()
        );
        assert!(
            section("source = \"dev\"\nca_dir = \"ca\"")
                .check(false)
                .is_err()
        );
        let dev = section("source = \"dev\"\nca_dir = \"ca\"\nid = \"spiffe://td/x\"");
        assert!(dev.check(false).is_ok());
        assert!(matches!(
            dev.source_config(),
            Ok(Some(IdentitySourceConfig::Dev { .. }))
        ));
        assert!(
            section("source = \"dev\"\nca_dir = \"ca\"\nid = \"nope\"")
                .source_config()
                .is_err()
        );
        assert!(
            section("cert = \"c\"\nkey = \"k\"\nbundle = \"b\"")
                .source_config()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn patterns_of_foreign_trust_domains() {
        assert_eq!(
            pattern_trust_domain("spiffe://acme.example/ops/**"),
            Some("acme.example")
        );
        assert_eq!(pattern_trust_domain("spiffe://td"), Some("td"));
        assert_eq!(pattern_trust_domain("acme/x"), None);
        let trusted = vec!["acme.example".to_string()];
        let f = foreign_patterns(
            [
                "spiffe://acme.example/a",
                "spiffe://example.org/b",
                "spiffe://acme.example.org/c",
            ],
            &trusted,
        );
        assert_eq!(
            f,
            [
                (1, "spiffe://example.org/b"),
                (2, "spiffe://acme.example.org/c")
            ]
        );
    }

    #[test]
    fn preflight_reads_the_files_and_names_the_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::DevCa::generate("acme.example").unwrap();
        let id = SpiffeId::parse("spiffe://acme.example/x").unwrap();
        ca.issue_to_dir(&id, Duration::from_secs(600), &dir.path().join("x"))
            .unwrap();
        let s = IdentitySection {
            dir: Some(dir.path().join("x")),
            ..Default::default()
        };
        let p = s.preflight(false).unwrap();
        assert_eq!(p.spiffe_id, Some(id));
        assert_eq!(p.trust_domains, Some(vec!["acme.example".to_string()]));
        let missing = IdentitySection {
            dir: Some(dir.path().join("dev-identity/y")),
            ..Default::default()
        };
        let e = missing.preflight(false).unwrap_err();
        assert!(e.contains("dev-identity/y/tls.crt"), "{e}");
        assert!(e.contains("slimctl dev-ca setup"), "{e}");
    }
}

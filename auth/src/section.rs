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
}

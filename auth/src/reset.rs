//! The secret behind QUIC stateless resets that survive a restart.
//!
//! A QUIC endpoint answers a packet for a connection it does not know with a
//! *stateless reset*: a packet ending in a token that only the endpoint which
//! issued the connection ID can compute (an HMAC of the ID). The peer that
//! receives it drops the connection at once instead of waiting for its idle
//! timeout. That only works across a process restart if the new process
//! computes the same tokens as the old one, i.e. keys its HMAC (and the
//! keyed check of its connection IDs) with the same secret. quinn picks both
//! keys at random per process by default, so a `kill -9`'d and restarted
//! node or controller was noticed by its peers only through their idle
//! timeout.
//!
//! [`ResetSecret`] is that secret, from one of:
//! - a file of 32 random bytes ([`ResetSecret::load_or_create`]), created
//!   (mode 0600) when missing: stable for as long as the file is;
//! - the endpoint's TLS private key ([`ResetSecret::from_tls_key`]), through
//!   HKDF-SHA256: stable for as long as the key is (a static key, or files
//!   that have not rotated yet; a restart after a rotation falls back to the
//!   idle timeout once).
//!
//! The keys quinn needs are derived from it with HKDF, each with its own
//! label, so the secret itself never keys anything directly.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::PrivateKeyDer;

use crate::AuthError;
use crate::files;

/// Length of the secret and of a reset key file.
pub const RESET_SECRET_LEN: usize = 32;

/// Domain separation: the salt of every HKDF in this module.
const SALT: &[u8] = b"slim quic stateless reset v1";

/// Where a [`ResetSecret`] came from (for the startup log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetSecretOrigin {
    /// Read from this file (`created`: it did not exist and was written now).
    File { path: PathBuf, created: bool },
    /// Derived from the endpoint's TLS private key.
    TlsKey,
    /// Random, for this process only: peers notice a restart only through
    /// their idle timeout.
    Random,
}

impl fmt::Display for ResetSecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetSecretOrigin::File {
                path,
                created: false,
            } => write!(f, "file {}", path.display()),
            ResetSecretOrigin::File {
                path,
                created: true,
            } => write!(f, "file {} (created)", path.display()),
            ResetSecretOrigin::TlsKey => f.write_str("derived from the TLS private key"),
            ResetSecretOrigin::Random => f.write_str("random (this process only)"),
        }
    }
}

/// The persistent secret of a QUIC endpoint's stateless resets.
#[derive(Clone)]
pub struct ResetSecret {
    secret: [u8; RESET_SECRET_LEN],
    origin: ResetSecretOrigin,
}

impl fmt::Debug for ResetSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the bytes: configs holding this are logged with `{:?}`.
        f.debug_struct("ResetSecret")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A fixed-length HKDF output.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand<const N: usize>(prk: &hkdf::Prk, label: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    // `expand`/`fill` fail only for an output longer than 255 hash lengths;
    // N is at most 32 here, so the error arms are unreachable.
    if let Ok(okm) = prk.expand(&[label], Len(N)) {
        let _ = okm.fill(&mut out);
    }
    out
}

impl ResetSecret {
    /// Reads the secret from `path`, or creates the file with fresh random
    /// bytes (mode 0600) when it does not exist. Creation is atomic: a
    /// concurrent starter reads either no file or the whole of one.
    pub fn load_or_create(path: &Path) -> Result<ResetSecret, AuthError> {
        match fs::read(path) {
            Ok(bytes) => return Self::from_file_bytes(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AuthError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let mut secret = [0u8; RESET_SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AuthError::NoRandomness)?;
        // Written whole under a temporary name, then linked into place: the
        // link fails if another process won the race, and we read its file.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        files::write_new(&tmp, &secret, 0o600)?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(ResetSecret {
                secret,
                origin: ResetSecretOrigin::File {
                    path: path.to_owned(),
                    created: true,
                },
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = fs::read(path).map_err(|source| AuthError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_file_bytes(path, &bytes)
            }
            Err(source) => Err(AuthError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// An existing file's secret.
    fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<Self, AuthError> {
        let secret: [u8; RESET_SECRET_LEN] = bytes.try_into().map_err(|_| AuthError::BadFile {
            path: path.to_owned(),
            reason: format!(
                "a stateless reset key file holds exactly {RESET_SECRET_LEN} bytes, not {} \
                     (remove it to have a new one created)",
                bytes.len()
            ),
        })?;
        warn_if_readable_by_others(path);
        Ok(ResetSecret {
            secret,
            origin: ResetSecretOrigin::File {
                path: path.to_owned(),
                created: false,
            },
        })
    }

    /// The secret derived from a TLS private key (its DER bytes) with
    /// HKDF-SHA256 under this module's own label: knowing the secret (or
    /// tokens made from it) tells nothing about the key.
    pub fn from_tls_key(key: &PrivateKeyDer<'_>) -> ResetSecret {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(key.secret_der());
        ResetSecret {
            secret: expand(&prk, b"secret from tls key"),
            origin: ResetSecretOrigin::TlsKey,
        }
    }

    /// A secret for this process only.
    pub fn random() -> Result<ResetSecret, AuthError> {
        let mut secret = [0u8; RESET_SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AuthError::NoRandomness)?;
        Ok(ResetSecret {
            secret,
            origin: ResetSecretOrigin::Random,
        })
    }

    pub fn origin(&self) -> &ResetSecretOrigin {
        &self.origin
    }

    fn prk(&self) -> hkdf::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(&self.secret)
    }

    /// The key of the stateless reset tokens (quinn's `EndpointConfig::new`
    /// takes it: `ring::hmac::Key` implements its `HmacKey`).
    pub fn hmac_key(&self) -> hmac::Key {
        let k: [u8; 32] = expand(&self.prk(), b"reset token hmac");
        hmac::Key::new(hmac::HMAC_SHA256, &k)
    }

    /// The key of quinn's `HashedConnectionIdGenerator`, which signs the
    /// connection IDs it issues and drops packets whose ID it did not sign
    /// *before* considering a reset. With a per-process key (quinn's
    /// default), a restarted endpoint would drop the old connections'
    /// packets as "invalid CID" and never reset them.
    pub fn cid_key(&self) -> u64 {
        u64::from_le_bytes(expand(&self.prk(), b"connection id key"))
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", m.permissions().mode() & 0o777),
            "the stateless reset key file is readable by others; whoever reads it can reset this endpoint's connections (chmod 600)"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &ResetSecret, cid: &[u8]) -> Vec<u8> {
        hmac::sign(&s.hmac_key(), cid).as_ref().to_vec()
    }

    #[test]
    fn a_created_file_is_read_back_as_the_same_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reset.key");
        let a = ResetSecret::load_or_create(&path).unwrap();
        assert_eq!(
            a.origin(),
            &ResetSecretOrigin::File {
                path: path.clone(),
                created: true
            }
        );
        assert_eq!(fs::read(&path).unwrap().len(), RESET_SECRET_LEN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let b = ResetSecret::load_or_create(&path).unwrap();
        assert!(matches!(
            b.origin(),
            ResetSecretOrigin::File { created: false, .. }
        ));
        assert_eq!(token(&a, b"cid-1"), token(&b, b"cid-1"));
        assert_eq!(a.cid_key(), b.cid_key());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_of_the_wrong_length_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reset.key");
        fs::write(&path, b"short").unwrap();
        let e = ResetSecret::load_or_create(&path).unwrap_err();
        assert!(matches!(e, AuthError::BadFile { .. }), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"short");
    }

    #[test]
    fn the_tls_key_derivation_is_stable_and_key_specific() {
        let ca = crate::DevCa::generate("example.org").unwrap();
        let id = crate::SpiffeId::parse("spiffe://example.org/node").unwrap();
        let a = ca.issue(&id, std::time::Duration::from_secs(60)).unwrap();
        let b = ca.issue(&id, std::time::Duration::from_secs(60)).unwrap();
        let a1 = ResetSecret::from_tls_key(&a.key);
        let a2 = ResetSecret::from_tls_key(&a.key.clone_key());
        let b1 = ResetSecret::from_tls_key(&b.key);
        assert_eq!(token(&a1, b"cid"), token(&a2, b"cid"));
        assert_eq!(a1.cid_key(), a2.cid_key());
        assert_ne!(token(&a1, b"cid"), token(&b1, b"cid"));
        assert_ne!(a1.cid_key(), b1.cid_key());
    }

    #[test]
    fn random_secrets_differ_and_debug_shows_no_bytes() {
        let a = ResetSecret::random().unwrap();
        let b = ResetSecret::random().unwrap();
        assert_ne!(token(&a, b"x"), token(&b, b"x"));
        let dbg = format!("{a:?}");
        assert!(dbg.contains("Random") && !dbg.contains("secret:"), "{dbg}");
    }
}

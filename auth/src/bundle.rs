//! [`TrustBundles`]: the CA certificates trusted per trust domain.

use std::collections::BTreeMap;
use std::fmt;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::id::{SpiffeId, TrustDomain};
use crate::{AuthError, pem, x509};

/// CA certificates per trust domain.
///
/// A peer's SVID is only checked against the bundle of the trust domain named in
/// its SPIFFE ID, so a CA trusted for one trust domain cannot vouch for another.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustBundles {
    map: BTreeMap<String, Vec<CertificateDer<'static>>>,
}

impl TrustBundles {
    /// No bundles: nothing is trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `ca` for trust domain `td` (duplicates are ignored).
    pub fn add(&mut self, td: &str, ca: CertificateDer<'static>) {
        let cas = self.map.entry(td.to_string()).or_default();
        if !cas.contains(&ca) {
            cas.push(ca);
        }
    }

    /// The CA certificates trusted for `td`.
    pub fn get(&self, td: &str) -> Option<&[CertificateDer<'static>]> {
        self.map.get(td).map(Vec::as_slice)
    }

    /// Removes the bundle of `td`, returning it.
    pub fn remove(&mut self, td: &str) -> Option<Vec<CertificateDer<'static>>> {
        self.map.remove(td)
    }

    /// Adds every CA of `other`.
    pub fn merge(&mut self, other: &TrustBundles) {
        for (td, cas) in &other.map {
            for ca in cas {
                self.add(td, ca.clone());
            }
        }
    }

    /// Trust domains that have a bundle, sorted.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// True when no CA is trusted at all.
    pub fn is_empty(&self) -> bool {
        self.map.values().all(Vec::is_empty)
    }

    /// Parses a PEM bundle. A CA whose certificate carries a `spiffe://<td>` URI SAN
    /// is filed under that trust domain (this is how SPIFFE CAs and federated bundles
    /// identify themselves); a CA without one is taken to be a CA of `own_td`.
    pub fn from_pem(own_td: &str, pem: &[u8]) -> Result<Self, AuthError> {
        let own_td = TrustDomain::parse(own_td)?;
        let mut bundles = TrustBundles::new();
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert
                .map_err(|e| AuthError::Bundle(format!("certificate #{}: bad PEM: {e}", i + 1)))?;
            let info = x509::parse(&cert)
                .map_err(|e| AuthError::Bundle(format!("certificate #{}: {e}", i + 1)))?;
            let mut tds = info
                .uris
                .iter()
                .filter(|u| u.starts_with("spiffe://"))
                .map(|u| SpiffeId::parse(u).map(|id| id.trust_domain().to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    AuthError::Bundle(format!("certificate #{}: bad SPIFFE URI SAN: {e}", i + 1))
                })?;
            tds.sort();
            tds.dedup();
            let td = match tds.as_slice() {
                [] => own_td.as_str().to_string(),
                [td] => td.clone(),
                _ => {
                    return Err(AuthError::Bundle(format!(
                        "certificate #{} names several trust domains in its URI SANs",
                        i + 1
                    )));
                }
            };
            bundles.add(&td, cert);
        }
        if bundles.is_empty() {
            return Err(AuthError::Bundle("no CERTIFICATE block found".into()));
        }
        Ok(bundles)
    }

    /// All CA certificates of all trust domains as one PEM bundle.
    pub fn to_pem(&self) -> String {
        self.map
            .values()
            .flatten()
            .map(|ca| pem::encode("CERTIFICATE", ca))
            .collect()
    }
}

impl fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|(td, cas)| (td, cas.len())))
            .finish()
    }
}

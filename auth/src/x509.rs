//! Thin owned view over the parts of a certificate that SPIFFE cares about, so
//! the rest of the crate does not deal with x509-parser lifetimes.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyUsageBits {
    pub digital_signature: bool,
    pub key_cert_sign: bool,
    pub crl_sign: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    pub uris: Vec<String>,
    pub is_ca: bool,
    pub key_usage: Option<KeyUsageBits>,
    pub not_after: i64,
    pub authority_key_id: Option<Vec<u8>>,
    pub subject_key_id: Option<Vec<u8>>,
    pub spki: Vec<u8>,
}

pub(crate) fn parse(der: &[u8]) -> Result<CertInfo, String> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes of trailing data after the certificate",
            rest.len()
        ));
    }
    // The accessors below reject duplicated extensions, which matters: a second
    // SAN extension must not be able to smuggle in another identity.
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    let uris = sans
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| format!("bad basicConstraints extension: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    let key_usage = cert
        .key_usage()
        .map_err(|e| format!("bad keyUsage extension: {e}"))?
        .map(|ku| KeyUsageBits {
            digital_signature: ku.value.digital_signature(),
            key_cert_sign: ku.value.key_cert_sign(),
            crl_sign: ku.value.crl_sign(),
        });
    let mut authority_key_id = None;
    let mut subject_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            ParsedExtension::SubjectKeyIdentifier(ski) => subject_key_id = Some(ski.0.to_vec()),
            _ => {}
        }
    }
    Ok(CertInfo {
        uris,
        is_ca,
        key_usage,
        not_after: cert.validity().not_after.timestamp(),
        authority_key_id,
        subject_key_id,
        spki: cert.public_key().raw.to_vec(),
    })
}

pub(crate) fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

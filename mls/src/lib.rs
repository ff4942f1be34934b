//! End-to-end encryption for SLIM channels (MLS, RFC 9420, via openmls).
//!
//! Not implemented yet: this crate is filled by the sessions issue. It will
//! hold, synchronous and I/O-free (bytes in, bytes out): key packages, groups,
//! commits and welcomes, application-message encryption and decryption, and
//! MLS credentials bound to the member's SPIFFE ID (a binding of the MLS
//! signature key signed by the member's X.509-SVID key). The router never
//! depends on this crate: nodes forward ciphertext they cannot read.
#![forbid(unsafe_code)]

/// Errors of the MLS layer.
#[derive(Debug, thiserror::Error)]
pub enum MlsError {
    /// Returned by every entry point until the MLS layer lands, so nothing can
    /// mistake a missing encryption layer for a working one.
    #[error("MLS is not implemented yet (sessions issue)")]
    NotImplemented,
}

/// Placeholder entry point that fails loudly.
pub fn encrypt(_group: &[u8], _plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
    Err(MlsError::NotImplemented)
}

#[cfg(test)]
mod tests {
    #[test]
    fn says_it_is_not_there() {
        assert!(super::encrypt(b"g", b"p").is_err());
    }
}

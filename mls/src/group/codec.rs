//! Decoding of untrusted MLS bytes, encoding, and mapping of openmls errors to [`MlsError`].

use std::fmt;

use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;

use crate::MlsError;

pub(super) fn credential_identity(credential: &Credential) -> Result<Vec<u8>, MlsError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|e| MlsError::MalformedCredential(format!("not a basic credential: {e}")))?;
    Ok(basic.identity().to_vec())
}

/// Runs a TLS-codec decode of untrusted bytes. tls_codec 0.4 has a
/// `debug_assert!` on the length prefix of variable-length vectors (a first
/// byte with the two top bits set) that panics on such input in builds with
/// debug assertions, where release builds return an error. Catch that panic so
/// hostile bytes are a typed error in every build.
pub(super) fn decode_untrusted<T, E: fmt::Display>(
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, MlsError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(MlsError::Malformed(format!("{what}: {e}"))),
        Err(_) => Err(MlsError::Malformed(format!(
            "{what}: invalid variable-length vector prefix"
        ))),
    }
}

pub(super) fn parse_message(bytes: &[u8]) -> Result<MlsMessageBodyIn, MlsError> {
    decode_untrusted("MLS message", || MlsMessageIn::tls_deserialize_exact(bytes))
        .map(MlsMessageIn::extract)
}

pub(super) fn map_group_state(op: &'static str, e: MlsGroupStateError) -> MlsError {
    match e {
        MlsGroupStateError::UseAfterEviction => MlsError::Evicted,
        MlsGroupStateError::PendingCommit => MlsError::PendingCommit,
        other => MlsError::protocol(op, other),
    }
}

pub(super) fn map_process<E: fmt::Debug>(e: ProcessMessageError<E>) -> MlsError {
    match e {
        ProcessMessageError::ValidationError(v) => match v {
            ValidationError::WrongGroupId => MlsError::WrongGroup,
            ValidationError::WrongEpoch | ValidationError::NoPastEpochData => MlsError::WrongEpoch,
            ValidationError::CannotDecryptOwnMessage => MlsError::OwnMessage,
            ValidationError::InvalidSignature | ValidationError::InvalidMembershipTag => {
                MlsError::Tampered
            }
            ValidationError::UnableToDecrypt(d) => match d {
                MessageDecryptionError::AeadError | MessageDecryptionError::MalformedContent => {
                    MlsError::Tampered
                }
                MessageDecryptionError::SecretTreeError(
                    SecretTreeError::SecretReuseError | SecretTreeError::TooDistantInThePast,
                ) => MlsError::Replay,
                MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInTheFuture) => {
                    MlsError::TooFarAhead
                }
                other => MlsError::protocol("decrypt", other),
            },
            other => MlsError::protocol("process message", other),
        },
        ProcessMessageError::GroupStateError(s) => map_group_state("process message", s),
        ProcessMessageError::IncompatibleWireFormat => {
            MlsError::UnexpectedMessage("plaintext handshake message (only ciphertext accepted)")
        }
        other => MlsError::protocol("process message", format!("{other:?}")),
    }
}

pub(super) fn to_bytes(op: &'static str, m: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    m.to_bytes().map_err(|e| MlsError::protocol(op, e))
}

//! End-to-end encryption for SLIM channels: MLS (RFC 9420) via openmls, with
//! member credentials bound to SPIFFE X.509-SVIDs.
//!
//! Synchronous and I/O-free: bytes in, bytes out. The router never depends on
//! this crate; nodes forward ciphertext they cannot read (every group message,
//! commits included, is an MLS `PrivateMessage`; only Welcomes and key
//! packages travel in the clear, and those carry no application data).
//!
//! # Pieces
//!
//! - [`MlsIdentity`]: an Ed25519 MLS signature key pair plus a `BasicCredential`
//!   whose identity bytes are `[version, spiffe_id, SVID chain DER, binding]`
//!   (MessagePack), `binding` being an ECDSA-P256-SHA256 signature by the
//!   X.509-SVID private key over [`binding_message`]
//!   (`"slim-mls-binding-v1" || len||spiffe_id || len||mls_signature_key`). It
//!   also owns the key store holding the private keys of its key packages
//!   ([`MlsIdentity::key_package`]).
//! - [`verify_credential`]: decode, verify the SVID chain with
//!   [`slim_auth::verify_svid`] (client-auth usage, the given trust bundles and
//!   time), check the claimed SPIFFE ID equals the SVID's, verify the binding
//!   with the leaf's public key. Returns the proven [`slim_auth::SpiffeId`].
//! - [`Group`], one per channel, ciphersuite [`CIPHERSUITE`]
//!   (`MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`), ratchet tree carried in
//!   the Welcome. Moderator: [`Group::create`], [`Group::add_members`] (verifies
//!   every key package's credential first, refusing with
//!   [`MlsError::CredentialRejected`] naming the member), [`Group::remove_members`],
//!   [`Group::merge_pending_commit`] / [`Group::clear_pending_commit`]. Member:
//!   [`Group::join`] (verifies every credential in the ratchet tree),
//!   [`Group::process_commit`] (verifies the credentials of added and updated
//!   leaves before merging), [`Group::encrypt`], [`Group::decrypt`] (verifies
//!   the sender's credential; verified credentials are cached by SHA-256 of
//!   credential and key, until the SVID's notAfter), [`Group::process`] for
//!   either, [`Group::members`], [`Group::epoch`]. [`Group::rebind`] commits a
//!   new MLS signature key and credential for a rotated SVID (same SPIFFE ID).
//! - One error type, [`MlsError`]. Replays are [`MlsError::Replay`] (openmls
//!   deletes a message key once used), tampering [`MlsError::Tampered`], a
//!   message after removal [`MlsError::WrongEpoch`] (commit not yet processed)
//!   or [`MlsError::Evicted`].
//!
//! # Semantics worth knowing
//!
//! - Members keep [`MAX_PAST_EPOCHS`] past epochs so that a message sent just
//!   before a commit still decrypts after it; replays stay refused there.
//! - A credential stops verifying at its SVID's notAfter: members must
//!   [`Group::rebind`] after each SVID rotation (SPIRE rotates at half-life, so
//!   there is time), otherwise their messages are refused once the old SVID
//!   expires.
//! - Only Add, Remove, Update and SelfRemove proposals inside commits are
//!   accepted; standalone proposals and external senders are refused
//!   ([`MlsError::UnsupportedProposal`]).
//! - A receiver more than 1000 messages behind one sender (openmls' maximum
//!   forward distance) gets [`MlsError::TooFarAhead`] for that sender's later
//!   messages; the session layer must resynchronise (re-add) such a member.
//! - Message keys are checked in the clear content type first, so handing a
//!   commit to [`Group::decrypt`] (or an application message to
//!   [`Group::process_commit`]) is refused without consuming it.
//! - openmls deletes the key package a Welcome names before validating the
//!   Welcome; [`Group::join`] puts it back when joining fails, so a corrupted
//!   or refused Welcome does not burn the key package.
//! - tls_codec 0.4 `debug_assert!`s on one kind of malformed length prefix;
//!   decoding of untrusted bytes catches that panic (debug builds only; release
//!   builds return the error directly), so bad bytes are always
//!   [`MlsError::Malformed`]. The default panic hook still prints it in debug
//!   test output; `[profile.dev.package.tls_codec] debug-assertions = false`
//!   at the workspace root would silence it.
//! - Group state lives in memory (openmls `MemoryStorage` in the identity's key
//!   store); nothing is persisted.
//!
//! # Used by
//!
//! - Group channels (`slim_client::session::channel`): the moderator checks
//!   the channel's SPIFFE-ID admission policy and compares
//!   [`key_package_claimed_id`] with the identity the node authenticated
//!   before [`Group::add_members`] proves it; commits travel in the
//!   moderator's stream, one per epoch; members' [`Group::rebind`] commits
//!   are sequenced by the moderator, driven by identity-source rotations.
//!
//! # Left open
//!
//! - Refreshing [`Group::set_bundles`] on bundle rotation.
//! - Persistence of group state across restarts, and deleting a group's state
//!   from the shared key store when a channel closes.
#![forbid(unsafe_code)]

pub mod credential;
mod error;
mod group;

pub use credential::{
    BINDING_DOMAIN, VerifiedCredential, bind_credential, binding_message, claimed_spiffe_id,
    encode_credential, verify_credential, verify_credential_full,
};
pub use error::MlsError;
pub use group::{
    CIPHERSUITE, Commit, CommitInfo, Decrypted, Group, Incoming, MAX_PAST_EPOCHS, MlsIdentity,
    key_package_claimed_id,
};

//! End-to-end encryption of a session's payloads: a 2-member MLS group the
//! initiator creates from the responder's key package (sent in its `Accept`)
//! and the responder joins from the initiator's Welcome. Both ends check that
//! the other's MLS credential is for the SPIFFE ID its node authenticated.

use bytes::Bytes;
use slim_mls::{Group, MlsIdentity};

use crate::session::SessionError;

/// A session's MLS state.
pub(crate) enum MlsState {
    Off,
    /// Responder: key package sent, waiting for the Welcome.
    Pending(MlsIdentity),
    Ready(Box<Group>),
}

pub(crate) fn mls_err(e: slim_mls::MlsError) -> SessionError {
    SessionError::Mls(e.to_string())
}

/// The SPIFFE ID `claimed` by an MLS credential must be the one the node
/// authenticated the peer's connection as: the session's transport peer and
/// its MLS peer are then the same workload.
fn check_mls_peer(claimed: &str, transport: Option<&str>) -> Result<(), SessionError> {
    if transport != Some(claimed) {
        return Err(SessionError::Mls(format!(
            "MLS credential is for {claimed}, but the peer authenticated as {transport:?}"
        )));
    }
    Ok(())
}

/// Initiator: verifies the responder's key package `kp` (bound to the SPIFFE
/// ID its node authenticated, `peer_identity`) and creates the group with
/// it; returns the group and the Welcome for the responder.
pub(crate) fn initiate(
    identity: &MlsIdentity,
    session_id: u64,
    kp: &[u8],
    peer_identity: Option<&str>,
) -> Result<(Group, Vec<u8>), SessionError> {
    let claimed = slim_mls::key_package_claimed_id(kp).map_err(mls_err)?;
    check_mls_peer(&claimed, peer_identity)?;
    let mut group = Group::create(identity, &session_id.to_be_bytes()).map_err(mls_err)?;
    // Verifies the key package's SVID binding against the trust bundle.
    let commit = group.add_members(&[kp]).map_err(mls_err)?;
    group.merge_pending_commit().map_err(mls_err)?;
    let welcome = commit
        .welcome
        .ok_or_else(|| SessionError::Mls("add produced no Welcome".into()))?;
    Ok((group, welcome))
}

impl MlsState {
    /// Responder: joins the group from the initiator's `welcome`, checking
    /// that the other member is the authenticated peer.
    pub(crate) fn join(
        &mut self,
        welcome: &[u8],
        peer_identity: Option<&str>,
    ) -> Result<(), SessionError> {
        let MlsState::Pending(identity) = &*self else {
            return Err(SessionError::Mls("not waiting for a Welcome".into()));
        };
        let g = Group::join(identity, welcome, identity.bundles()).map_err(mls_err)?;
        let own = g.own_id().as_str().to_owned();
        let others: Vec<String> = g
            .members()
            .iter()
            .map(|m| m.as_str().to_owned())
            .filter(|m| *m != own)
            .collect();
        match others.as_slice() {
            [one] => check_mls_peer(one, peer_identity)?,
            _ => {
                return Err(SessionError::Mls(format!(
                    "a point-to-point group has 2 members, this one {}",
                    others.len() + 1
                )));
            }
        }
        *self = MlsState::Ready(Box::new(g));
        Ok(())
    }

    /// An application payload as it goes on the wire.
    pub(crate) fn seal(&mut self, payload: Bytes) -> Result<Bytes, SessionError> {
        match self {
            MlsState::Off => Ok(payload),
            MlsState::Ready(g) => g.encrypt(&payload).map(Bytes::from).map_err(mls_err),
            MlsState::Pending(_) => Err(SessionError::Mls("not joined yet".into())),
        }
    }

    /// A delivered payload for the application, or why it is rejected.
    /// Delivery is exactly once and in order, so each ciphertext is
    /// decrypted once and MLS replay protection never trips on our own
    /// retransmissions.
    pub(crate) fn open(
        &mut self,
        payload: Bytes,
        peer_identity: Option<&str>,
    ) -> Result<Bytes, String> {
        match self {
            MlsState::Off => Ok(payload),
            MlsState::Ready(g) => match g.decrypt(&payload) {
                Ok(d) if Some(d.sender.as_str()) == peer_identity => Ok(Bytes::from(d.plaintext)),
                Ok(d) => Err(format!("sent by {} instead of the peer", d.sender)),
                Err(e) => Err(e.to_string()),
            },
            MlsState::Pending(_) => Err("data before the MLS Welcome".into()),
        }
    }
}

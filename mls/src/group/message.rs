//! Application messages of a [`Group`]: encrypting, decrypting and processing incoming messages.

use openmls::prelude::*;

use super::codec::{map_group_state, map_process, parse_message, to_bytes};
use super::state::Group;
use super::types::{CommitInfo, Decrypted, Incoming};
use crate::MlsError;

impl Group {
    /// Encrypts an application message for the group.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
        let provider = &*self.me.inner.provider;
        let msg = self
            .group
            .create_message(provider, &self.me.inner.signer, plaintext)
            .map_err(|e| match e {
                CreateMessageError::GroupStateError(s) => map_group_state("encrypt", s),
                other => MlsError::protocol("encrypt", format!("{other:?}")),
            })?;
        to_bytes("message encoding", &msg)
    }

    /// Decrypts an application message and verifies its sender's SPIFFE-bound
    /// credential. A commit here is [`MlsError::UnexpectedMessage`] (and is not
    /// applied): use [`process_commit`](Self::process_commit) or
    /// [`process`](Self::process).
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Decrypted, MlsError> {
        match self.process_inner(bytes, Some(ContentType::Application))? {
            Incoming::Application(d) => Ok(d),
            Incoming::Commit(_) => Err(MlsError::UnexpectedMessage("commit given to decrypt")),
        }
    }

    /// Processes a commit from another member: verifies the credentials of
    /// members it adds or updates, then merges it.
    pub fn process_commit(&mut self, bytes: &[u8]) -> Result<CommitInfo, MlsError> {
        match self.process_inner(bytes, Some(ContentType::Commit))? {
            Incoming::Commit(c) => Ok(c),
            Incoming::Application(_) => Err(MlsError::UnexpectedMessage(
                "application message given to process_commit",
            )),
        }
    }

    /// Processes any group message: an application message is decrypted, a
    /// commit is verified and merged.
    pub fn process(&mut self, bytes: &[u8]) -> Result<Incoming, MlsError> {
        self.process_inner(bytes, None)
    }

    /// `expect`: refuse (without consuming any key) a message of another
    /// content type; the content type is in the clear in a PrivateMessage.
    fn process_inner(
        &mut self,
        bytes: &[u8],
        expect: Option<ContentType>,
    ) -> Result<Incoming, MlsError> {
        let pm: ProtocolMessage = match parse_message(bytes)? {
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            _ => {
                return Err(MlsError::UnexpectedMessage(
                    "not a group message (welcome, key package or group info)",
                ));
            }
        };
        if !self.group.is_active() {
            return Err(MlsError::Evicted);
        }
        if let Some(want) = expect
            && pm.content_type() != want
        {
            return Err(MlsError::UnexpectedMessage(match want {
                ContentType::Application => "not an application message",
                _ => "not a commit",
            }));
        }
        let provider = &*self.me.inner.provider;
        let processed = self
            .group
            .process_message(provider, pm)
            .map_err(map_process)?;
        let sender_idx = match processed.sender() {
            Sender::Member(idx) => *idx,
            _ => {
                return Err(MlsError::UnexpectedMessage(
                    "message from a non-member sender",
                ));
            }
        };
        let sender_id = self.verify_sender(sender_idx, processed.credential())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                Ok(Incoming::Application(Decrypted {
                    sender: sender_id,
                    plaintext: app.into_bytes(),
                }))
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let info = self.check_commit(sender_idx, sender_id, &staged)?;
                let provider = &*self.me.inner.provider;
                self.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| MlsError::protocol("merge commit", format!("{e:?}")))?;
                Ok(Incoming::Commit(CommitInfo {
                    epoch: self.group.epoch().as_u64(),
                    ..info
                }))
            }
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(
                MlsError::UnsupportedProposal("standalone proposals are not accepted"),
            ),
        }
    }
}

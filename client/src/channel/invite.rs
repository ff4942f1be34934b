//! Incoming channel invitations, to accept or decline.

use std::time::Instant;

use slim_wire::{Mode, Name};
use tokio::sync::mpsc;

use super::handles::ChannelMember;
use super::options::ChannelOptions;
use crate::session::Kind;
use crate::session::channel::ChannelError;
use crate::session::channel::Member;
use crate::session::mux::{Incoming, SessionMux};

/// Incoming channel invitations (the mux's acceptor for control packets).
pub struct Invitations {
    mux: SessionMux,
    rx: mpsc::Receiver<Incoming>,
}

/// One invitation, to accept or decline.
pub struct Invitation {
    mux: SessionMux,
    incoming: Incoming,
    /// The channel's name.
    pub channel: Name,
    /// Whether the channel uses MLS.
    pub mls: bool,
    /// The inviting moderator (full name) and its node-authenticated SPIFFE ID.
    pub from: Name,
    pub from_identity: Option<String>,
}

impl Invitations {
    /// Takes the mux's acceptor for channel control packets.
    pub fn listen(mux: &SessionMux, cap: usize) -> Result<Invitations, ChannelError> {
        let rx = mux.acceptor(&[Kind::Control], cap)?;
        Ok(Invitations {
            mux: mux.clone(),
            rx,
        })
    }

    /// The next invitation (other unsolicited control packets are dropped).
    pub async fn next(&mut self) -> Option<Invitation> {
        loop {
            let inc = self.rx.recv().await?;
            let Ok((channel, mls)) = Member::parse_invite(&inc.packet) else {
                continue;
            };
            let Ok(channel) = Name::parse(&channel) else {
                continue;
            };
            return Some(Invitation {
                mux: self.mux.clone(),
                channel,
                mls,
                from: inc.from.clone(),
                from_identity: inc.from_identity.as_deref().map(str::to_owned),
                incoming: inc,
            });
        }
    }

    /// Accepts every invitation with `opts`; joined channels (or why joining
    /// failed) come out of the returned receiver.
    pub fn auto_accept(
        mut self,
        opts: ChannelOptions,
    ) -> mpsc::Receiver<Result<ChannelMember, ChannelError>> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(inv) = self.next().await {
                let tx = tx.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    let _ = tx.send(inv.accept(opts).await).await;
                });
            }
        });
        rx
    }
}

impl Invitation {
    /// Answers with a key package and waits for the Welcome.
    pub async fn accept(self, opts: ChannelOptions) -> Result<ChannelMember, ChannelError> {
        let me = self.mux.client().name().as_str().to_owned();
        let mut cfg = opts.config.clone();
        cfg.metrics = self.mux.client().metrics_on();
        let m = Member::accept_invite(
            &me,
            self.incoming.from.as_str(),
            &self.incoming.packet,
            opts.identity.clone(),
            cfg,
            Instant::now(),
        )?;
        ChannelMember::start(&self.mux, &self.channel, m, &opts).await
    }

    /// Declines, telling the moderator why.
    pub async fn decline(self, reason: &str) -> Result<(), ChannelError> {
        let me = self.mux.client().name().as_str().to_owned();
        let packet = Member::decline_packet(&me, &self.incoming.packet, reason)?;
        self.mux
            .publish_silent(&self.incoming.from, Mode::Unicast, &packet)
            .await?;
        Ok(())
    }
}

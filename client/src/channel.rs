//! Group channels: moderator and member handles over a [`SessionMux`].
//!
//! Each handle owns one driver task that moves packets, time and commands
//! between the mux and the sans-IO machine in [`crate::session::channel`]
//! (which documents the protocol). The task subscribes to the channel's
//! multicast name, registers the channel's session id with the mux, and
//! unregisters and unsubscribes when it ends.
//!
//! * [`Channel::create`] → [`ChannelModerator`]: `invite`, `remove`,
//!   `members`, `publish`, `close`, `recv` (events).
//! * [`Channel::join`] → [`ChannelMember`] once admitted, or
//!   [`ChannelError::JoinRefused`] with the moderator's reason.
//! * [`Invitations::listen`] takes the mux's acceptor for channel control
//!   packets; each [`Invitation`] is accepted or declined by the application,
//!   or all of them automatically with [`Invitations::auto_accept`].
//!
//! Events are delivered through a bounded queue (`ChannelOptions::events`);
//! a handle whose events are not read eventually stalls its driver (which
//! then stops reading its inbox, whose overflow the reliability layer
//! recovers): read events.

mod ctl;
mod driver;
mod handles;
mod invite;
mod options;

pub use crate::session::channel::{
    ChannelConfig, ChannelError, ChannelEvent, ChannelStats, MemberInfo, session_id,
};
pub(crate) use ctl::GroupCtl;
pub use handles::{Channel, ChannelMember, ChannelModerator};
pub use invite::{Invitation, Invitations};
pub use options::{ChannelOptions, Published};

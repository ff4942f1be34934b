//! Point-to-point sessions over a [`SessionMux`](crate::session::SessionMux).
//!
//! Opening: the initiator registers a random session id and publishes `Open`
//! (or `OpenRpc`) **anycast** to a service name; whichever instance the node
//! picks answers `Accept` from its full name, and from then on both ends
//! publish unicast to each other's full name — the reply binds the session to
//! that instance. A lost `Open`/`Accept` is repaired by resending `Open`
//! (bounded attempts); a duplicate `Open` reaching the responder's session is
//! answered with `Accept` again. If a retransmitted `Open` reached a second
//! instance, its late `Accept` is answered with `Close` so it does not linger.
//! With no subscriber to the service the node's `NO_ROUTE` surfaces as
//! [`SessionError::NoResponder`](crate::session::SessionError::NoResponder).
//! Mid-session, the node's `NO_ROUTE` is tolerated for
//! [`P2pConfig::peer_absent_grace`] (the peer may be reconnecting), while a
//! peer that answers "no such session" fails the session at once.
//!
//! Closing: `Close` carries the number of messages sent; the closer keeps
//! retransmitting what is unacknowledged (and `Close` itself) until all is
//! acknowledged or given up, bounded by the retry budget. The other end
//! reports [`P2pEvent::PeerClosed`] only once everything before the close was
//! delivered or reported lost, and lingers ([`P2pConfig::linger`]) answering
//! retransmitted `Close`s before its task ends.
//!
//! The protocol is sans-IO, in the style of the [`reliable`](super::reliable)
//! machines: [`Opener`] (initiator) and [`open_refusal`]/[`accept_open`]
//! (responder) run the handshake and yield a bound [`P2pMachine`], which owns
//! both directions' delivery machines, the close, and MLS. Inputs are
//! `handle_*(…, now)`, outputs `poll_*`; nothing in them reads a clock or
//! does I/O, so the tests drive whole sessions through a lossy simulated link
//! in virtual time. Each bound session then has one task (the driver) that
//! owns its machine, its inbox, a bounded command channel and a bounded event
//! channel to the application: messages in, events out.
//!
//! Layout, each file using only the ones before it:
//!
//! * `types`: settings, events, counters, what the machines ask to publish.
//! * `mls`: the 2-member MLS group of a session (create, join, seal, open).
//! * `machine`: the bound session ([`P2pMachine`]).
//! * `handshake`: opening ([`Opener`], the responder's answer).
//! * `driver`: the I/O: open/answer over the mux, the session task.
//! * `handle`: the application's handles ([`P2pSession`], [`P2pSender`],
//!   [`P2pReceiver`], [`P2pListener`]).

mod driver;
mod handle;
mod handshake;
mod machine;
mod mls;
mod types;

pub(crate) use handle::open;
pub use handle::{P2pListener, P2pReceiver, P2pSender, P2pSession};
pub use handshake::{Opener, accept_open, open_refusal};
pub use machine::{CLOSE_ATTEMPTS, P2pMachine, SendStatus};
pub use slim_mls::MlsIdentity;
pub use types::{
    ACCEPT_JOINED, OPEN_MLS, OPEN_RELIABLE, P2pConfig, P2pEvent, P2pStats, Reliability, Transmit,
};

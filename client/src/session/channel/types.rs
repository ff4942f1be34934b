//! The data a channel machine exposes: roster entries, events, tuning and
//! counters.

use std::time::Duration;

use bytes::Bytes;

use super::error::ChannelError;
use crate::session::group::GroupConfig;

/// A member as the roster knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberInfo {
    /// Full name (`org/ns/service/instance`).
    pub name: String,
    /// SPIFFE ID (verified by MLS when on, by the node otherwise).
    pub spiffe_id: String,
}

/// What a channel machine tells the application.
#[derive(Debug)]
pub enum ChannelEvent {
    /// Member: admitted; `members` is the roster at `epoch`.
    Joined {
        epoch: u64,
        members: Vec<MemberInfo>,
    },
    /// An application message, decrypted, in its sender's order.
    Message {
        sender: String,
        spiffe_id: String,
        seq: u64,
        epoch: u64,
        payload: Bytes,
    },
    /// The roster changed by a commit (moderator: when it commits; member:
    /// when it applies the commit).
    MembersChanged {
        epoch: u64,
        added: Vec<MemberInfo>,
        removed: Vec<MemberInfo>,
    },
    /// Moderator: an admission completed (the member joined, every member
    /// applied the commit or was reported unresponsive).
    MemberJoined { member: MemberInfo, epoch: u64 },
    /// A member's credential changed (SVID rotation rebind); moderator: when
    /// every member applied it, member: when it applies it.
    CredentialUpdated { member: MemberInfo, epoch: u64 },
    /// Moderator: a removal completed.
    MemberLeft {
        member: MemberInfo,
        epoch: u64,
        reason: String,
    },
    /// Moderator: a join request was refused.
    JoinRequestRefused {
        name: String,
        spiffe_id: Option<String>,
        reason: String,
    },
    /// Moderator: an invitation was declined, unanswered or failed.
    InviteFailed { name: String, reason: String },
    /// Moderator: a member missed `missed` pings or acks.
    MemberUnresponsive { member: MemberInfo, missed: u32 },
    /// Member: the moderator refused the join request.
    JoinRefused { reason: String },
    /// Member: the join request got no answer or could not be sent.
    JoinFailed { reason: String },
    /// Member: nothing from the moderator (not even a ping) for
    /// `max_missed_pings` ping intervals. Reported once per silence.
    ModeratorUnresponsive { silent_for: Duration },
    /// Member: removed from the channel (by the moderator or after `leave`).
    Removed { reason: String },
    /// The channel was closed by the moderator.
    ChannelClosed { reason: String },
    /// The node's authorization policy refused one of our publishes to the
    /// channel (during a join attempt, the join fails with it instead).
    Denied { reason: String },
    /// Messages from `sender` that will never be delivered.
    Lost { sender: String, seqs: Vec<u64> },
    /// Something was refused (tampered, replayed, forged, malformed…).
    Rejected { sender: String, error: ChannelError },
}

/// Channel tuning and policy.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// MLS on (every payload is MLS ciphertext) or off (plaintext).
    pub mls: bool,
    /// SPIFFE ID patterns (`spiffe://td/path/*`, trailing `**`) whose holders
    /// may join by request. Empty: invitation only.
    pub admission: Vec<String>,
    /// Per-sender sequencing and recovery.
    pub group: GroupConfig,
    /// How long a membership change waits for acks (and a leave for its
    /// confirmation).
    pub change_timeout: Duration,
    /// Resend interval of Welcomes and join requests.
    pub retry: Duration,
    /// How long an invitation or a join request waits for an answer.
    pub join_timeout: Duration,
    /// Liveness ping interval (moderator).
    pub ping_interval: Duration,
    /// Intervals without any sign of life before a member is reported.
    pub max_missed_pings: u32,
    /// Remove members reported unresponsive.
    pub remove_unresponsive: bool,
    /// Queued membership changes plus outstanding invitations.
    pub max_pending: usize,
    /// Members (moderator included).
    pub max_members: usize,
    /// Messages held for an epoch not yet reached.
    pub max_held: usize,
    /// Tail-loss probe: this long after our stream's last item, and then
    /// at doubling intervals (`tail_probes` times in all), that item is
    /// multicast again, so that a member that missed the end of a burst
    /// (e.g. sent into a connection that a node restart killed, before the
    /// SDK reconnected) sees the gap and asks for it. Without it a lost
    /// last message, or a lost last commit, is never noticed. Zero: off.
    pub tail_probe: Duration,
    pub tail_probes: u32,
    /// Count refusals in the `metrics` registry (the driver sets it from
    /// the client's `metrics` option).
    pub metrics: bool,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            mls: true,
            admission: Vec::new(),
            // Asking 10 times (0.1 s doubling to 2 s: about 13 s in all)
            // before reporting a message lost rides out a node restart,
            // during which requests go nowhere.
            group: GroupConfig {
                max_requests: 10,
                ..GroupConfig::default()
            },
            change_timeout: Duration::from_secs(5),
            retry: Duration::from_millis(500),
            join_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(1),
            max_missed_pings: 3,
            remove_unresponsive: false,
            max_pending: 64,
            max_members: 4096,
            max_held: 1024,
            tail_probe: Duration::from_millis(250),
            tail_probes: 6,
            metrics: false,
        }
    }
}

/// Counters of one channel machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub published: u64,
    pub delivered: u64,
    pub rejected: u64,
    /// Messages from before our join epoch (not for us), skipped.
    pub before_join: u64,
    /// Messages held for a commit not yet applied (total).
    pub held: u64,
    /// Our stream's messages sent again at a member's request.
    pub retransmitted: u64,
    /// Retransmission requests we sent for others' missing messages.
    pub rtx_requests: u64,
    /// Missing messages that a retransmission recovered.
    pub recovered: u64,
    /// Messages of others' streams given up on (reported `Lost`).
    pub lost: u64,
    /// Stream messages received more than once (suppressed).
    pub duplicates: u64,
    /// Our newest stream item multicast again as a tail-loss probe.
    pub tail_probes: u64,
}

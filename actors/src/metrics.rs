//! Metric names and small recording helpers. Labels are bounded enums
//! (kind, reason, mode), never names, identities or sessions.

use metrics::{counter, gauge};

use crate::registry::Registry;

pub const CONNECTIONS: &str = "slim_connections";
pub const CONNECTIONS_TOTAL: &str = "slim_connections_total";
pub const HANDSHAKES_TOTAL: &str = "slim_handshakes_total";
/// Client certificates refused at the TLS handshake, by SVID check (`reason`).
pub const HANDSHAKE_REFUSALS_TOTAL: &str = "slim_handshake_refusals_total";
/// Connections closed because the peer's certificate expired.
pub const PEER_CERT_EXPIRED_TOTAL: &str = "slim_peer_cert_expired_total";
pub const FRAMES_IN_TOTAL: &str = "slim_frames_in_total";
pub const BYTES_IN_TOTAL: &str = "slim_bytes_in_total";
pub const BYTES_OUT_TOTAL: &str = "slim_bytes_out_total";
pub const MESSAGES_ROUTED_TOTAL: &str = "slim_messages_routed_total";
pub const DELIVERIES_TOTAL: &str = "slim_deliveries_total";
pub const MESSAGES_DROPPED_TOTAL: &str = "slim_messages_dropped_total";
pub const SLOW_CONSUMER_EVENTS_TOTAL: &str = "slim_slow_consumer_events_total";
pub const PROTOCOL_ERRORS_TOTAL: &str = "slim_protocol_errors_total";
pub const SUBSCRIPTIONS: &str = "slim_subscriptions";
pub const REGISTRY_NAMES: &str = "slim_registry_names";
pub const ACTOR_RESTARTS_TOTAL: &str = "slim_actor_restarts_total";
/// Unix time at which the node's current SVID expires.
pub const SVID_EXPIRY_SECONDS: &str = "slim_svid_expiry_timestamp_seconds";
pub const SVID_ROTATIONS_TOTAL: &str = "slim_svid_rotations_total";
pub const FRAMES_OUT_TOTAL: &str = "slim_frames_out_total";
pub const QUEUE_BYTES: &str = "slim_queue_bytes";
pub const QUEUE_BYTES_MAX: &str = "slim_queue_bytes_max";
/// Sampled (1 in [`ROUTING_SAMPLE`] publishes): complete publish frame in
/// hand → deliver queued on every chosen outbox.
pub const ROUTING_SECONDS: &str = "slim_routing_seconds";
/// Per writer batch: how long its oldest frame waited in the outbox before
/// being handed to QUIC.
pub const ENQUEUE_TO_WRITE_SECONDS: &str = "slim_enqueue_to_write_seconds";
pub const ROUTING_SAMPLE: u64 = 64;
/// Explicit buckets for every `_seconds` histogram: 1 µs … 2.5 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
];
pub const AUTHZ_DENIED_TOTAL: &str = "slim_authz_denied_total";
/// Peer links by state (`connecting`, `up`, `backoff`).
pub const LINKS: &str = "slim_links";
/// Frames over peer links (`direction` = `in`/`out`; data stream).
pub const LINK_FRAMES_TOTAL: &str = "slim_link_frames_total";
/// Bytes over peer links (`direction` = `in`/`out`).
pub const LINK_BYTES_TOTAL: &str = "slim_link_bytes_total";
/// Messages a link did not carry (`reason` = `queue_full`, `loop`).
pub const LINK_DROPS_TOTAL: &str = "slim_link_drops_total";
/// Redials of dialled links (after a failure or a link going down).
pub const LINK_RECONNECTS_TOTAL: &str = "slim_link_reconnects_total";
/// Failed link attempts by this node (`reason`).
pub const LINK_CONNECT_FAILURES_TOTAL: &str = "slim_link_connect_failures_total";
/// Peer hellos this node refused (`reason`).
pub const LINK_REFUSALS_TOTAL: &str = "slim_link_refusals_total";
/// Live links that ended on an error (`reason`).
pub const LINK_DOWN_TOTAL: &str = "slim_link_down_total";
/// Interest entries held (link sets and name states of every origin node,
/// tombstones included).
pub const INTEREST_ENTRIES: &str = "slim_interest_entries";
/// Origin nodes whose interest entries this node holds (itself included).
pub const INTEREST_ORIGINS: &str = "slim_interest_origins";
/// Bytes of interest frames sent to peers.
pub const INTEREST_BYTES_TOTAL: &str = "slim_interest_bytes_total";
/// Times interest for a peer waited because its control queue was full.
pub const INTEREST_DEFERRED_TOTAL: &str = "slim_interest_deferred_total";
/// Interest entries refused as invalid (`reason`).
pub const INTEREST_REFUSED_TOTAL: &str = "slim_interest_refused_total";
/// What a policy reload took away from established connections, by `what`
/// (`connection`, `subscription`).
pub const POLICY_REVOCATIONS_TOTAL: &str = "slim_policy_revocations_total";

/// Entries of the node's per-connection tables, by `table`: `connections`
/// (live client connections), `registry_connections` (connections holding
/// subscriptions), `registry_owners` (claimed full names). All go back to
/// zero once every client left; one that does not is a leak.
pub const TABLE_ENTRIES: &str = "slim_table_entries";
/// Tasks alive on the node's async runtime (tokio), listener and actors
/// included: back to its idle value once every client left.
pub const RUNTIME_TASKS: &str = "slim_runtime_tasks";
/// The slim-node binary's heap allocator (jemalloc), by `kind`: `allocated`
/// (bytes in live allocations), `resident` (bytes of physical memory the
/// allocator holds, freed-but-not-yet-returned pages included).
pub const ALLOCATOR_BYTES: &str = "slim_allocator_bytes";
/// Datagrams quinn drops unanswered, by `reason` (`malformed`,
/// `unknown_cid`, `short_initial`, `unsupported_version`): junk, scans and
/// floods that reach no connection.
pub const QUIC_JUNK_DATAGRAMS_TOTAL: &str = "slim_quic_junk_datagrams_total";
/// Connection attempts (QUIC Incomings) by what the node did with them
/// (`outcome`: `accepted`, `retry`, `refused_capacity`, `refused_rate`,
/// `refused_source_handshakes`, `refused_connections`,
/// `ignored_capacity`).
pub const INCOMING_TOTAL: &str = "slim_incoming_total";
/// Connections between their first Initial and their hello (TLS + hello).
pub const HANDSHAKES_IN_PROGRESS: &str = "slim_handshakes_in_progress";
/// Connections closed over a frame that did not complete, by `reason`
/// (`timeout`: not within `frame_read_timeout`; `budget`: the node's
/// budget of bytes in incomplete frames was spent).
pub const PARTIAL_FRAME_CLOSES_TOTAL: &str = "slim_partial_frame_closes_total";
/// Bytes held in incomplete large frames across all connections (what the
/// partial-frame budget bounds).
pub const PARTIAL_FRAME_BYTES: &str = "slim_partial_frame_bytes";

pub fn denied(action: &'static str) {
    counter!(AUTHZ_DENIED_TOTAL, "action" => action).increment(1);
}

/// A publish dropped by a route hook (tests' frame-level loss injection).
pub fn dropped_by_hook() {
    counter!(MESSAGES_DROPPED_TOTAL, "reason" => "hook").increment(1);
}

pub fn registry_gauges(reg: &Registry) {
    gauge!(SUBSCRIPTIONS).set(reg.subscription_count() as f64);
    gauge!(REGISTRY_NAMES).set(reg.name_count() as f64);
}

pub fn dropped(reason: &'static str, n: u64) {
    counter!(MESSAGES_DROPPED_TOTAL, "reason" => reason).increment(n);
}

pub fn protocol_error(reason: &'static str) {
    counter!(PROTOCOL_ERRORS_TOTAL, "reason" => reason).increment(1);
}

pub fn handshake(result: &'static str) {
    counter!(HANDSHAKES_TOTAL, "result" => result).increment(1);
}

//! Metric names and small recording helpers. Labels are bounded enums
//! (kind, reason, mode), never names, identities or sessions.

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::registry::Registry;

/// Open connections by `kind` (a gauge; `_open` keeps it apart from the
/// `slim_connections_total` counter family).
pub const CONNECTIONS: &str = "slim_connections_open";
pub const CONNECTIONS_TOTAL: &str = "slim_connections_total";
pub const HANDSHAKES_TOTAL: &str = "slim_handshakes_total";
/// Client certificates refused at the TLS handshake, by SVID check (`reason`).
pub const HANDSHAKE_REFUSALS_TOTAL: &str = "slim_handshake_refusals_total";
/// Connections closed because the peer's certificate expired.
pub const PEER_CERT_EXPIRED_TOTAL: &str = "slim_peer_cert_expired_total";
/// Connections closed because the JWT-SVID they authenticated with expired.
pub const PEER_JWT_EXPIRED_TOTAL: &str = "slim_peer_jwt_expired_total";
pub const FRAMES_IN_TOTAL: &str = "slim_frames_in_total";
pub const BYTES_IN_TOTAL: &str = "slim_bytes_in_total";
pub const BYTES_OUT_TOTAL: &str = "slim_bytes_out_total";
pub const MESSAGES_ROUTED_TOTAL: &str = "slim_messages_routed_total";
pub const DELIVERIES_TOTAL: &str = "slim_deliveries_total";
pub const MESSAGES_DROPPED_TOTAL: &str = "slim_messages_dropped_total";
pub const SLOW_CONSUMER_EVENTS_TOTAL: &str = "slim_slow_consumer_events_total";
pub const QUEUE_SHED_TOTAL: &str = "slim_queue_shed_total";
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
pub const QUEUE_OVERFLOW_BYTES: &str = "slim_queue_overflow_bytes";
/// The QUIC send window each client connection has now (see `sendbudget`).
pub const SEND_WINDOW_BYTES: &str = "slim_send_window_bytes";
/// Client connections that were sent something in the last quarter second
/// (they share the send budget).
pub const RECEIVING_CONNECTIONS: &str = "slim_receiving_connections";
/// Sampled (1 in [`ROUTING_SAMPLE`] publishes): complete publish frame in
/// hand → deliver queued on every chosen outbox.
pub const ROUTING_SECONDS: &str = "slim_routing_seconds";
/// Per writer batch: how long its oldest frame waited in the outbox before
/// being handed to QUIC.
pub const ENQUEUE_TO_WRITE_SECONDS: &str = "slim_enqueue_to_write_seconds";
/// Per wait: how long a publisher's reader (or a link's) waited for room in
/// a full outbox before its frame went in or the write deadline passed.
pub const PUBLISHER_WAIT_SECONDS: &str = "slim_publisher_wait_seconds";
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
/// Messages a link did not carry (`reason` = `queue_full`, `link_gone`, `loop`).
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
/// The smallest and largest UDP payload the live connections of a `kind`
/// (client, peer) send, by `stat` (min, max): what path-MTU discovery
/// reached, or the loopback size; 0 while there is none.
pub const PATH_DATAGRAM_BYTES: &str = "slim_path_datagram_bytes";

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

/// The build's version (and commit, when the build set `SLIM_GIT_SHA`), as
/// the value-1 gauge Prometheus joins on.
pub const BUILD_INFO: &str = "slim_build_info";

/// Registers every node metric's HELP text and unit with the installed
/// recorder (once, at startup; harmless to repeat).
pub fn describe() {
    use Unit::{Bytes, Count, Seconds};
    let c =
        |name: &'static str, unit: Unit, help: &'static str| describe_counter!(name, unit, help);
    let g = |name: &'static str, unit: Unit, help: &'static str| describe_gauge!(name, unit, help);
    g(
        CONNECTIONS,
        Count,
        "Open connections by kind (client; peer = live peer links).",
    );
    c(
        CONNECTIONS_TOTAL,
        Count,
        "Connections accepted after handshake and hello, by kind.",
    );
    c(
        HANDSHAKES_TOTAL,
        Count,
        "Incoming connection attempts by outcome (result).",
    );
    c(
        HANDSHAKE_REFUSALS_TOTAL,
        Count,
        "Client credentials refused, by the check that failed (reason; no_certificate = none presented).",
    );
    c(
        PEER_CERT_EXPIRED_TOTAL,
        Count,
        "Connections closed because the peer's certificate expired.",
    );
    c(
        PEER_JWT_EXPIRED_TOTAL,
        Count,
        "Connections closed because the JWT-SVID they authenticated with expired.",
    );
    c(FRAMES_IN_TOTAL, Count, "Frames read from clients.");
    c(FRAMES_OUT_TOTAL, Count, "Frames written to clients.");
    c(BYTES_IN_TOTAL, Bytes, "Stream bytes read, in bytes.");
    c(BYTES_OUT_TOTAL, Bytes, "Stream bytes written, in bytes.");
    c(
        MESSAGES_ROUTED_TOTAL,
        Count,
        "Publishes that found at least one destination, by delivery mode (one per message, whatever its fan-out).",
    );
    c(
        DELIVERIES_TOTAL,
        Count,
        "Message copies queued to local subscribers' outboxes (one per subscriber per message); routed fan-out = this + dropped{slow_consumer,subscriber_gone}.",
    );
    c(
        MESSAGES_DROPPED_TOTAL,
        Count,
        "Messages or copies not delivered, by reason.",
    );
    c(
        SLOW_CONSUMER_EVENTS_TOTAL,
        Count,
        "Slow-consumer events by action: disconnect (cut after the write deadline), drop (declared slow under the drop policy; its messages are dropped until it drains), link (a peer link stayed full past its deadline).",
    );
    c(
        QUEUE_SHED_TOTAL,
        Count,
        "Message copies already counted in slim_deliveries_total and then dropped from a subscriber's queue: under the drop policy, what a slow consumer held in overflow room, dropped when it was declared slow to give the room back.",
    );
    c(
        PROTOCOL_ERRORS_TOTAL,
        Count,
        "Connections closed for bad input, by reason.",
    );
    c(
        AUTHZ_DENIED_TOTAL,
        Count,
        "Refusals by the authorization policy, by action.",
    );
    c(
        POLICY_REVOCATIONS_TOTAL,
        Count,
        "What policy reloads took from established connections (what = connection, subscription).",
    );
    g(
        SUBSCRIPTIONS,
        Count,
        "(connection, name) subscriptions in the registry.",
    );
    g(REGISTRY_NAMES, Count, "Distinct names with a subscriber.");
    g(
        QUEUE_BYTES,
        Bytes,
        "Bytes queued in all client outboxes (sampled every second).",
    );
    g(
        QUEUE_BYTES_MAX,
        Bytes,
        "Bytes queued in the fullest client outbox (sampled every second).",
    );
    g(
        QUEUE_OVERFLOW_BYTES,
        Bytes,
        "Bytes full client outboxes hold beyond their own cap, of the node's [queue] overflow_bytes (sampled every second); at the limit, publishers wait for their slowest subscriber.",
    );
    g(
        SEND_WINDOW_BYTES,
        Bytes,
        "QUIC send window of each client connection: the node's send budget ([queue] send_budget_bytes) shared by the receiving connections, 64 KiB to 2 MiB.",
    );
    g(
        RECEIVING_CONNECTIONS,
        Count,
        "Client connections sent something in the last 250 ms (they share the send budget).",
    );
    describe_histogram!(
        ROUTING_SECONDS,
        Seconds,
        "Seconds from a complete publish frame to its deliver queued on every chosen outbox; sampled 1 in 64 publishes."
    );
    describe_histogram!(
        ENQUEUE_TO_WRITE_SECONDS,
        Seconds,
        "Seconds the oldest frame of a writer batch waited in its outbox before being handed to QUIC."
    );
    describe_histogram!(
        PUBLISHER_WAIT_SECONDS,
        Seconds,
        "Seconds a publisher's reader waited for room in a full outbox (back-pressure instead of a drop); one sample per wait. A wait that reaches the write deadline makes the outbox's owner a slow consumer."
    );
    c(
        ACTOR_RESTARTS_TOTAL,
        Count,
        "Supervised actors that failed and were cleaned up or restarted, by actor.",
    );
    g(
        SVID_EXPIRY_SECONDS,
        Seconds,
        "Unix time in seconds at which the node's current X.509-SVID expires.",
    );
    c(
        SVID_ROTATIONS_TOTAL,
        Count,
        "Node SVID rotations picked up from its identity source.",
    );
    g(
        LINKS,
        Count,
        "Peer links by state (connecting, up, backoff; sampled every second).",
    );
    c(
        LINK_FRAMES_TOTAL,
        Count,
        "Forwarded-publish frames over peer links' data streams, by direction.",
    );
    c(
        LINK_BYTES_TOTAL,
        Bytes,
        "Bytes over peer links, by direction.",
    );
    c(
        LINK_DROPS_TOTAL,
        Count,
        "Forwarded messages a link did not carry, by reason (queue_full, link_gone, loop).",
    );
    c(
        LINK_RECONNECTS_TOTAL,
        Count,
        "Redials of dialled peer links.",
    );
    c(
        LINK_CONNECT_FAILURES_TOTAL,
        Count,
        "Failed peer link attempts by this node, by reason.",
    );
    c(
        LINK_REFUSALS_TOTAL,
        Count,
        "Peer hellos this node refused, by reason.",
    );
    c(
        LINK_DOWN_TOTAL,
        Count,
        "Live peer links that ended on an error, by reason.",
    );
    g(
        INTEREST_ENTRIES,
        Count,
        "Interest entries held (link sets and name states of every origin node, tombstones included).",
    );
    g(
        INTEREST_ORIGINS,
        Count,
        "Origin nodes whose interest entries this node holds (itself included).",
    );
    c(
        INTEREST_BYTES_TOTAL,
        Bytes,
        "Bytes of interest frames sent to peers.",
    );
    c(
        INTEREST_DEFERRED_TOTAL,
        Count,
        "Times interest for a peer waited because the link's control queue was full.",
    );
    c(
        INTEREST_REFUSED_TOTAL,
        Count,
        "Interest entries refused as invalid, by reason.",
    );
    g(
        TABLE_ENTRIES,
        Count,
        "Entries of the node's per-connection tables, by table (sampled every second).",
    );
    g(
        RUNTIME_TASKS,
        Count,
        "Tasks alive on the node's async runtime (sampled every second).",
    );
    g(
        ALLOCATOR_BYTES,
        Bytes,
        "The heap allocator's bytes by kind (allocated, resident; sampled every second).",
    );
    c(
        QUIC_JUNK_DATAGRAMS_TOTAL,
        Count,
        "Datagrams dropped unanswered before any connection, by reason.",
    );
    c(
        INCOMING_TOTAL,
        Count,
        "Connection attempts by what the node did with them before any per-connection state (outcome).",
    );
    g(
        HANDSHAKES_IN_PROGRESS,
        Count,
        "Connections between their first Initial and their hello.",
    );
    c(
        PARTIAL_FRAME_CLOSES_TOTAL,
        Count,
        "Connections closed over a frame that did not complete, by reason (timeout, budget).",
    );
    g(
        PARTIAL_FRAME_BYTES,
        Bytes,
        "Bytes held in incomplete frames beyond each connection's free 64 KiB.",
    );
    g(
        PATH_DATAGRAM_BYTES,
        Bytes,
        "Smallest and largest UDP payload live connections send, by kind (client, peer) and stat (min, max); 0 while there is none.",
    );
    g(
        BUILD_INFO,
        Count,
        "Always 1; the labels name the build (version, git_sha).",
    );
}

/// Every known value of the bounded labels a dashboard or alert sums over,
/// so each series exists (at 0) before its first event: `rate()` and
/// `increase()` then see the first one, and absent series do not read as
/// "no data".
pub fn init_zero() {
    for kind in ["client", "peer"] {
        gauge!(CONNECTIONS, "kind" => kind).increment(0.0);
        counter!(CONNECTIONS_TOTAL, "kind" => kind).increment(0);
    }
    for result in [
        "ok",
        "refused",
        "rejected",
        "unauthorized",
        "bad_hello",
        "timeout",
        "refused_capacity",
    ] {
        counter!(HANDSHAKES_TOTAL, "result" => result).increment(0);
    }
    for reason in [
        "no_certificate",
        "expired",
        "not_yet_valid",
        "untrusted_issuer",
        "unknown_trust_domain",
        "bad_signature",
    ] {
        counter!(HANDSHAKE_REFUSALS_TOTAL, "reason" => reason).increment(0);
    }
    for mode in ["anycast", "multicast", "unicast"] {
        counter!(MESSAGES_ROUTED_TOTAL, "mode" => mode).increment(0);
    }
    counter!(DELIVERIES_TOTAL).increment(0);
    for reason in [
        "no_route",
        "slow_consumer",
        "subscriber_gone",
        "unauthorized",
        "too_large",
        "malformed",
    ] {
        counter!(MESSAGES_DROPPED_TOTAL, "reason" => reason).increment(0);
    }
    for action in ["disconnect", "drop", "link"] {
        counter!(SLOW_CONSUMER_EVENTS_TOTAL, "action" => action).increment(0);
    }
    counter!(QUEUE_SHED_TOTAL).increment(0);
    for action in ["connect", "register", "publish", "subscribe"] {
        counter!(AUTHZ_DENIED_TOTAL, "action" => action).increment(0);
    }
    for what in ["connection", "subscription"] {
        counter!(POLICY_REVOCATIONS_TOTAL, "what" => what).increment(0);
    }
    for state in ["connecting", "up", "backoff"] {
        gauge!(LINKS, "state" => state).increment(0.0);
    }
    for direction in ["in", "out"] {
        counter!(LINK_FRAMES_TOTAL, "direction" => direction).increment(0);
        counter!(LINK_BYTES_TOTAL, "direction" => direction).increment(0);
    }
    for reason in ["queue_full", "link_gone", "loop"] {
        counter!(LINK_DROPS_TOTAL, "reason" => reason).increment(0);
    }
    for reason in ["liveness", "lost", "wire", "protocol"] {
        counter!(LINK_DOWN_TOTAL, "reason" => reason).increment(0);
    }
    counter!(LINK_RECONNECTS_TOTAL).increment(0);
    counter!(SVID_ROTATIONS_TOTAL).increment(0);
    counter!(PEER_CERT_EXPIRED_TOTAL).increment(0);
    counter!(PEER_JWT_EXPIRED_TOTAL).increment(0);
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => option_env!("SLIM_GIT_SHA").unwrap_or("unknown")
    )
    .set(1.0);
}

/// One back-pressure wait on a full outbox.
pub fn publisher_waited(d: std::time::Duration) {
    metrics::histogram!(PUBLISHER_WAIT_SECONDS).record(d.as_secs_f64());
}

//! Datagram size settings shared by the node (client connections, peer
//! links) and the SDK: path-MTU discovery up to a configured ceiling, and
//! UDP segmentation offload only where quinn's batches fit the kernel.

/// The UDP payloads a ceiling may name: QUIC's 1,200-byte minimum up to the
/// most one UDP datagram carries over IPv6 (65,527).
pub const UDP_PAYLOAD_RANGE: std::ops::RangeInclusive<u16> = 1200..=65_527;

/// Ethernet's 1,500 less the IPv6 and UDP headers (quinn's own default):
/// the default ceiling of client connections over a network, node and SDK
/// alike.
pub const ETHERNET_UDP_PAYLOAD: u16 = 1452;

/// Checks a configured ceiling against [`UDP_PAYLOAD_RANGE`]; the error
/// names the setting (`key`) and the range, for the caller's error type.
pub fn check_ceiling(key: &str, v: u16) -> Result<(), String> {
    let r = UDP_PAYLOAD_RANGE;
    if r.contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{key} must be {}..={} bytes, not {v}",
            r.start(),
            r.end()
        ))
    }
}

/// The largest UDP payload at which quinn may batch datagrams with GSO.
///
/// quinn 0.11 sends up to 10 datagrams of the current path MTU in one GSO
/// `sendmsg` (its `MAX_TRANSMIT_SEGMENTS`), and the kernel refuses a batch
/// over 65,507 bytes (one UDP datagram's maximum) with `EMSGSIZE`. quinn-udp
/// takes that error for a failed MTU probe and drops the batch without a
/// word, so every full batch above this size was lost and recovered only by
/// QUIC's loss detection, whose black-hole detection then put the path back
/// to 1,200 bytes: with a ceiling of 8,952, 10–40 refused batches in a 3 s
/// run at full speed, throughput below the 1,452-byte default and, in one
/// run in seven, a connection that crawled at ~200 messages/s.
/// 10 × 6,550 = 65,500.
pub const MAX_GSO_UDP_PAYLOAD: u16 = 6_550;

/// The datagram size on a loopback path. The loopback interface carries
/// 64 KiB datagrams (TCP on loopback sends 64 KiB segments too), so there
/// is nothing to discover: connections start at this size, just under
/// IPv4's largest UDP payload (65,507). quinn cannot batch datagrams this
/// large with segmentation offload, so it is off on loopback: one datagram
/// per `sendmsg`, but a tenth as many datagrams, AEAD calls and ACKs per
/// byte as at 6,550 with offload. `compare.sh 3` with it (and the SDK's
/// read-progress reports): 1 KiB 2.06×, 4 KiB 2.17×, 16 KiB 2.31× NATS,
/// against 1.56×, 1.46×, 1.86× at 6,550 (docs/BENCHMARKS.md). Memory:
/// an idle connection 40.8–41.1 KiB (40.0–40.3 at 6,550); the node's peak
/// RSS in a 1 → 1000 fan-out with the publisher on its own thread 340–376
/// MiB (277–371 at 6,550), within that row's run-to-run spread.
pub const LOOPBACK_UDP_PAYLOAD: u16 = 65_000;

/// The congestion window a loopback connection starts with, in datagrams.
/// quinn's default initial window (14,720 bytes, RFC 9002's ten datagrams
/// of 1,472) is less than one loopback datagram, so a new connection would
/// send one datagram per round trip until its window grew.
const LOOPBACK_INITIAL_WINDOW_DATAGRAMS: u64 = 10;

/// What a connection's datagrams cross, which decides how they are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Both ends on this host: the loopback interface, whose MTU is known
    /// (64 KiB) and cannot change under the connection.
    Loopback,
    /// Anything else: the MTU is found by probing.
    Network,
}

impl Path {
    /// The path to `peer` (an IPv4-mapped IPv6 address counts as IPv4, as a
    /// dual-stack socket reports it).
    pub fn to(peer: std::net::IpAddr) -> Path {
        if peer.to_canonical().is_loopback() {
            Path::Loopback
        } else {
            Path::Network
        }
    }
}

/// Sets the datagram sizes of a connection over `path` on `t`, and turns
/// UDP segmentation offload off when datagrams may grow past
/// [`MAX_GSO_UDP_PAYLOAD`]. Returns whether segmentation offload stays on.
///
/// On a [`Path::Network`], datagrams start at QUIC's safe 1,200 bytes and
/// grow by path-MTU discovery up to `max_udp_payload`, only once a probe of
/// the larger size was acknowledged; the socket sets DF (quinn-udp), so a
/// path that cannot carry a probe drops it rather than fragmenting it, and a
/// later black hole falls back to 1,200. A ceiling below 1,200 means "do not
/// grow", not an error.
///
/// On [`Path::Loopback`], datagrams start at `max_udp_payload` or
/// [`LOOPBACK_UDP_PAYLOAD`], whichever is larger, with nothing to probe.
/// Discovery there cost every new connection its first round trips on
/// probes: with a 6,550 ceiling the loopback connect rate halved
/// (1,081–1,155 → 551–575 conn/s), while starting at 6,550 raised it to
/// 1,397–1,446 conn/s (fewer handshake datagrams) and carried 1 KiB
/// messages ~40 % faster than 1,452 (docs/BENCHMARKS.md); 65,000 without
/// segmentation offload is faster again (see [`LOOPBACK_UDP_PAYLOAD`]), and
/// such a connection starts with a congestion window of ten of them. The
/// peer's `max_udp_payload_size` transport parameter still bounds what is
/// sent.
pub fn configure(t: &mut quinn::TransportConfig, max_udp_payload: u16, path: Path) -> bool {
    let (start, ceiling) = match path {
        Path::Network => (1200, max_udp_payload.max(1200)),
        Path::Loopback => {
            let size = max_udp_payload.max(LOOPBACK_UDP_PAYLOAD);
            (size, size)
        }
    };
    // Discovery stays on at loopback with nothing to search (start equals
    // the ceiling): should heavy loss ever look like a black hole and put
    // the path back to 1,200, it probes its way up again after quinn's
    // cool-down instead of staying small for the connection's life.
    let mut m = quinn::MtuDiscoveryConfig::default();
    m.upper_bound(ceiling);
    t.initial_mtu(start).mtu_discovery_config(Some(m));
    if path == Path::Loopback {
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(LOOPBACK_INITIAL_WINDOW_DATAGRAMS * u64::from(start));
        t.congestion_controller_factory(std::sync::Arc::new(cubic));
    }
    let gso = gso_allowed(ceiling);
    t.enable_segmentation_offload(gso);
    gso
}

/// Lets the peers of an endpoint send datagrams up to `ceiling`, and at
/// least [`LOOPBACK_UDP_PAYLOAD`] (a peer on this host starts there,
/// [`configure`]). quinn's default is 1,472: without it the peers' discovery
/// stops at Ethernet size, whatever either side's ceiling is. The endpoint's
/// one receive buffer grows with it (×64 GRO segments ×32 messages per
/// receive: ~130 MB of address space at 65,000), not per connection; it is
/// allocated zeroed, so only the pages datagrams are received into count
/// (a 65,000-byte datagram per message slot: ~2 MiB). Clamped to
/// [`UDP_PAYLOAD_RANGE`], so it cannot fail.
pub fn accept_up_to(ep: &mut quinn::EndpointConfig, ceiling: u16) {
    let (lo, hi) = (*UDP_PAYLOAD_RANGE.start(), *UDP_PAYLOAD_RANGE.end());
    let _ = ep.max_udp_payload_size(ceiling.max(LOOPBACK_UDP_PAYLOAD).clamp(lo, hi));
}

/// Whether quinn's GSO batches stay within one UDP datagram's maximum at
/// this ceiling ([`MAX_GSO_UDP_PAYLOAD`]).
pub fn gso_allowed(max_udp_payload: u16) -> bool {
    max_udp_payload <= MAX_GSO_UDP_PAYLOAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_stays_on_up_to_the_largest_batch_that_fits_one_udp_datagram() {
        assert!(gso_allowed(1200));
        assert!(gso_allowed(1452));
        assert!(gso_allowed(MAX_GSO_UDP_PAYLOAD));
        assert!(!gso_allowed(MAX_GSO_UDP_PAYLOAD + 1));
        assert!(!gso_allowed(8952));
        // quinn's batch: at most 10 datagrams per GSO send; the bound is the
        // largest size at which 10 fit one UDP datagram (65,507 bytes).
        assert!(10 * u32::from(MAX_GSO_UDP_PAYLOAD) <= 65_507);
        assert!(10 * u32::from(MAX_GSO_UDP_PAYLOAD + 1) > 65_507);
        let mut t = quinn::TransportConfig::default();
        assert!(configure(&mut t, 1452, Path::Network));
        assert!(!configure(&mut t, 8952, Path::Network));
        // Loopback datagrams are too large for quinn's GSO batches.
        assert!(!configure(&mut t, 1452, Path::Loopback));
        assert!(!configure(&mut t, 8952, Path::Loopback));
        assert!(UDP_PAYLOAD_RANGE.contains(&LOOPBACK_UDP_PAYLOAD));
        assert!(
            u32::from(LOOPBACK_UDP_PAYLOAD) <= 65_507,
            "fits IPv4's UDP maximum"
        );
    }

    #[test]
    fn loopback_is_told_apart_in_every_spelling() {
        use std::net::IpAddr;
        for a in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                Path::to(a.parse::<IpAddr>().unwrap()),
                Path::Loopback,
                "{a}"
            );
        }
        for a in [
            "10.0.0.1",
            "192.168.1.2",
            "::ffff:10.0.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert_eq!(Path::to(a.parse::<IpAddr>().unwrap()), Path::Network, "{a}");
        }
    }
}

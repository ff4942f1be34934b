//! The node's UDP socket, seen by quinn through a thin wrapper that counts
//! datagrams quinn is about to drop without a word: quinn-proto discards
//! junk (too short for a header, connection IDs this node never issued, Initials
//! below the 1200-byte minimum, unknown versions) at debug level only, so
//! without this a flood of junk shows in no metric.
//!
//! The classification ([`classify`]) mirrors quinn-proto's own first checks
//! and is cheap: a few branches and, for short-header packets, the keyed
//! hash check of the connection ID that quinn repeats right after. A
//! stateless reset from a peer this node dialled also carries a random
//! connection ID and is counted as `unknown_cid`.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::{Counter, counter};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator};

use crate::metrics as m;

/// The smallest datagram a client may carry an Initial in (RFC 9000 §14.1).
const MIN_INITIAL_DATAGRAM: usize = 1200;

/// Length of the connection IDs this node issues (quinn's hashed generator).
const LOCAL_CID_LEN: usize = 8;

/// What quinn will make of one datagram, as far as its header tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Worth quinn's time (it may still fail decryption).
    Quic,
    /// Too short for any QUIC header.
    Malformed,
    /// A short-header packet whose connection ID this node did not issue.
    UnknownCid,
    /// A client Initial in a datagram below 1200 bytes.
    ShortInitial,
    /// A long header with a version this node does not speak.
    UnsupportedVersion,
}

impl Class {
    fn label(self) -> &'static str {
        match self {
            Class::Quic => "quic",
            Class::Malformed => "malformed",
            Class::UnknownCid => "unknown_cid",
            Class::ShortInitial => "short_initial",
            Class::UnsupportedVersion => "unsupported_version",
        }
    }
}

/// QUIC v1 and the drafts quinn still accepts (0xff00001d..=0xff000020).
fn supported(version: u32) -> bool {
    version == 1 || (0xff00_001d..=0xff00_0020).contains(&version)
}

/// Classifies one datagram; `ours` tells whether a connection ID is one
/// this node issued.
pub(crate) fn classify(d: &[u8], ours: impl Fn(&[u8]) -> bool) -> Class {
    // The fixed bit (0x40) is not checked: quinn negotiates
    // `grease_quic_bit` (RFC 9287), so peers clear it at random.
    let Some(&first) = d.first() else {
        return Class::Malformed;
    };
    if first & 0x80 == 0 {
        // Short header: the destination connection ID follows the first byte.
        return match d.get(1..1 + LOCAL_CID_LEN) {
            Some(cid) if ours(cid) => Class::Quic,
            Some(_) => Class::UnknownCid,
            None => Class::Malformed,
        };
    }
    let Some(v) = d.get(1..5) else {
        return Class::Malformed;
    };
    let version = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
    if version == 0 {
        // Version negotiation, from a peer this node dialled.
        return Class::Quic;
    }
    if !supported(version) {
        return Class::UnsupportedVersion;
    }
    let initial = (first >> 4) & 0x3 == 0;
    if initial && d.len() < MIN_INITIAL_DATAGRAM {
        // A server this node dialled may answer with a small Initial; its
        // destination connection ID is then one this node issued.
        let dcid_len = d.get(5).copied().unwrap_or(0) as usize;
        let ours = dcid_len == LOCAL_CID_LEN && d.get(6..6 + dcid_len).is_some_and(&ours);
        if !ours {
            return Class::ShortInitial;
        }
    }
    Class::Quic
}

/// The node's socket: the runtime's, with junk counted on the way in.
pub(crate) struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    cids: HashedConnectionIdGenerator,
    counts: [Counter; 4],
}

impl fmt::Debug for CountingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl CountingSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, cid_key: u64) -> Self {
        let c = |class: Class| counter!(m::QUIC_JUNK_DATAGRAMS_TOTAL, "reason" => class.label());
        CountingSocket {
            inner,
            cids: HashedConnectionIdGenerator::from_key(cid_key),
            counts: [
                c(Class::Malformed),
                c(Class::UnknownCid),
                c(Class::ShortInitial),
                c(Class::UnsupportedVersion),
            ],
        }
    }

    fn count(&self, d: &[u8]) {
        let ours = |cid: &[u8]| self.cids.validate(&ConnectionId::new(cid)).is_ok();
        let i = match classify(d, ours) {
            Class::Quic => return,
            Class::Malformed => 0,
            Class::UnknownCid => 1,
            Class::ShortInitial => 2,
            Class::UnsupportedVersion => 3,
        };
        self.counts[i].increment(1);
    }
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let r = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = r {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(n) {
                let data = &buf[..meta.len.min(buf.len())];
                // With GRO one buffer holds several datagrams, `stride` apart.
                for d in data.chunks(meta.stride.max(1)) {
                    self.count(d);
                }
            }
        }
        r
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(cid: &[u8]) -> bool {
        cid == [7u8; 8]
    }

    fn long(first: u8, version: u32, dcid: &[u8], len: usize) -> Vec<u8> {
        let mut d = vec![first];
        d.extend_from_slice(&version.to_be_bytes());
        d.push(dcid.len() as u8);
        d.extend_from_slice(dcid);
        d.resize(len, 0);
        d
    }

    #[test]
    fn classifies_what_quinn_drops() {
        assert_eq!(classify(&[], ours), Class::Malformed);
        // Fixed bit clear (greased) is still QUIC; a random first byte with a
        // connection ID the node never issued is not.
        let mut greased = vec![0x01];
        greased.extend_from_slice(&[7u8; 8]);
        assert_eq!(classify(&greased, ours), Class::Quic);
        assert_eq!(
            classify(&[0x00, 1, 2, 3, 4, 5, 6, 7, 8], ours),
            Class::UnknownCid
        );
        let mut short = vec![0x41];
        short.extend_from_slice(&[7u8; 8]);
        short.extend_from_slice(&[0u8; 30]);
        assert_eq!(classify(&short, ours), Class::Quic);
        short[3] = 9;
        assert_eq!(classify(&short, ours), Class::UnknownCid);
        assert_eq!(classify(&[0x41, 7, 7], ours), Class::Malformed);
        // Client Initial (type 0): 1200 bytes is fine, 1199 is not.
        assert_eq!(classify(&long(0xc0, 1, &[1; 8], 1200), ours), Class::Quic);
        assert_eq!(
            classify(&long(0xc0, 1, &[1; 8], 1199), ours),
            Class::ShortInitial
        );
        // A small Initial to a connection this node dialled.
        assert_eq!(classify(&long(0xc0, 1, &[7; 8], 200), ours), Class::Quic);
        // Handshake packets (type 2) may be small.
        assert_eq!(classify(&long(0xe0, 1, &[1; 8], 100), ours), Class::Quic);
        assert_eq!(
            classify(&long(0xc0, 0x1234_5678, &[1; 8], 1200), ours),
            Class::UnsupportedVersion
        );
        assert_eq!(classify(&long(0xc0, 0, &[1; 8], 50), ours), Class::Quic);
        assert_eq!(classify(&[0xc0, 0, 0], ours), Class::Malformed);
    }
}

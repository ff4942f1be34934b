//! The benchmark payload: `stream: u32 LE | seq: u64 LE | zero padding`.
//!
//! A stream is one publishing task (publisher connection × task), so every
//! subscriber can check per-stream ordering, gaps and duplicates.

use anyhow::{Result, bail};

/// Bytes taken by the header; the payload size must be at least this.
pub const HEADER: usize = 12;

/// A reusable payload buffer for one stream.
#[derive(Debug)]
pub struct PayloadWriter {
    buf: Vec<u8>,
}

impl PayloadWriter {
    pub fn new(stream: u32, size: usize) -> Result<Self> {
        if size < HEADER {
            bail!("payload size {size} is below the {HEADER}-byte header (stream + sequence)");
        }
        let mut buf = vec![0u8; size];
        buf[..4].copy_from_slice(&stream.to_le_bytes());
        Ok(PayloadWriter { buf })
    }

    /// The payload for sequence number `seq`.
    #[inline]
    pub fn with_seq(&mut self, seq: u64) -> &[u8] {
        self.buf[4..12].copy_from_slice(&seq.to_le_bytes());
        &self.buf
    }
}

/// Per-subscriber accounting of what arrived.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    next: Vec<u64>,
    /// Messages received (including duplicates and reordered ones).
    pub received: u64,
    /// Sequence numbers skipped within a stream (losses before the last
    /// message seen from that stream; losses at the tail are not gaps).
    pub gaps: u64,
    /// Messages whose sequence number was below one already seen on the
    /// stream: duplicates or reordering.
    pub out_of_order: u64,
    /// Payloads too short or naming an unknown stream.
    pub malformed: u64,
    /// Node-reported errors received instead of messages.
    pub errors: u64,
}

impl SeqTracker {
    pub fn new(streams: usize) -> Self {
        SeqTracker {
            next: vec![0; streams],
            ..Default::default()
        }
    }

    #[inline]
    pub fn observe(&mut self, payload: &[u8]) {
        self.received += 1;
        if payload.len() < HEADER {
            self.malformed += 1;
            return;
        }
        let stream = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
        let Some(next) = self.next.get_mut(stream) else {
            self.malformed += 1;
            return;
        };
        if seq >= *next {
            self.gaps += seq - *next;
            *next = seq + 1;
        } else {
            self.out_of_order += 1;
        }
    }

    pub fn merge(&mut self, o: &SeqTracker) {
        self.received += o.received;
        self.gaps += o.gaps;
        self.out_of_order += o.out_of_order;
        self.malformed += o.malformed;
        self.errors += o.errors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_gaps_and_reorders() {
        let mut w0 = PayloadWriter::new(0, 16).unwrap();
        let mut w1 = PayloadWriter::new(1, 16).unwrap();
        let mut t = SeqTracker::new(2);
        for s in [0, 1, 2, 5, 6, 4, 6] {
            t.observe(w0.with_seq(s));
        }
        t.observe(w1.with_seq(3));
        t.observe(&[1, 2, 3]);
        assert_eq!(t.received, 9);
        assert_eq!(t.gaps, 2 + 3);
        assert_eq!(t.out_of_order, 2);
        assert_eq!(t.malformed, 1);
    }

    #[test]
    fn rejects_tiny_payloads() {
        assert!(PayloadWriter::new(0, 11).is_err());
        assert_eq!(PayloadWriter::new(7, 12).unwrap().with_seq(9).len(), 12);
    }
}

//! Request/reply plumbing shared by `latency` and the attack harness's
//! legitimate stream: an echo responder, a reply reader feeding a
//! recorder, and a seen-set telling first replies from duplicates.

use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Conn, Incoming, Rx};

/// Replies (and node errors) read on a requester connection.
pub trait ReplySink: Send + 'static {
    /// One reply's payload, read at `now`.
    fn reply(&mut self, payload: &[u8], now: Instant);
    /// An error the node sent to the requester (e.g. no route).
    fn node_error(&mut self, error: String);
}

/// Messages taken from a connection per read.
const BATCH: usize = 256;

/// Answers every request on `rsp` with its own payload until `stop` turns
/// true (or the connection ends); returns the connection with the number of
/// replies sent and of replies that failed (or errors received).
pub fn spawn_echo_responder(
    mut rsp: Conn,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<(Conn, u64, u64)> {
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(BATCH);
        let (mut answered, mut failed) = (0u64, 0u64);
        loop {
            buf.clear();
            let n = tokio::select! {
                biased;
                _ = stop.wait_for(|v| *v) => break,
                n = rsp.rx.recv_batch(&mut buf, BATCH) => n,
            };
            if n == 0 {
                break;
            }
            for m in buf.drain(..) {
                match m {
                    Incoming::Msg { payload, reply } => match rsp.tx.reply(&reply, payload).await {
                        Ok(()) => answered += 1,
                        Err(_) => failed += 1,
                    },
                    Incoming::Error(_) => failed += 1,
                }
            }
        }
        (rsp, answered, failed)
    })
}

/// Reads replies from `rx` into `sink` until `stop` turns true (or the
/// connection ends); returns both.
pub fn spawn_reply_reader<S: ReplySink>(
    mut rx: Rx,
    mut sink: S,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<(S, Rx)> {
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(BATCH);
        loop {
            buf.clear();
            let n = tokio::select! {
                biased;
                _ = stop.wait_for(|v| *v) => break,
                n = rx.recv_batch(&mut buf, BATCH) => n,
            };
            if n == 0 {
                break;
            }
            let now = Instant::now();
            for m in buf.drain(..) {
                match m {
                    Incoming::Msg { payload, .. } => sink.reply(&payload, now),
                    Incoming::Error(e) => sink.node_error(e),
                }
            }
        }
        (sink, rx)
    })
}

/// Which sequence numbers below a bound have been seen (one bit each).
#[derive(Debug, Clone)]
pub struct SeenSet {
    bits: Vec<u64>,
    len: u64,
}

impl SeenSet {
    pub fn new(len: u64) -> Self {
        SeenSet {
            bits: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// `Some(true)` the first time `seq` is inserted, `Some(false)` after
    /// that, `None` if `seq` is out of range.
    pub fn insert(&mut self, seq: u64) -> Option<bool> {
        if seq >= self.len {
            return None;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let first = self.bits[w] & bit == 0;
        self.bits[w] |= bit;
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_set_tells_first_from_repeat() {
        let mut s = SeenSet::new(130);
        assert_eq!(s.insert(0), Some(true));
        assert_eq!(s.insert(129), Some(true));
        assert_eq!(s.insert(129), Some(false));
        assert_eq!(s.insert(64), Some(true));
        assert_eq!(s.insert(0), Some(false));
        assert_eq!(s.insert(130), None);
    }
}

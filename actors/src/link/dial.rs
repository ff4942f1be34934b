//! The dial loop of a dialled peer: connect, serve, back off with jitter,
//! stand by while the peer is connected through another link.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use tracing::info;

use crate::ctx::NodeCtx;
use crate::fed::shared::LinkShared;
use crate::link::error::LinkError;
use crate::link::handshake::dial;
use crate::link::session::serve_dialled;
use crate::metrics as m;
use crate::types::{LinkState, PeerSpec};

/// `base` jittered into [base/2, base], so that many nodes that lost
/// the same peer do not all redial in lockstep.
pub(crate) fn jittered(base: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map(|()| u32::from_le_bytes(b))
        .unwrap_or(u32::MAX / 2);
    let half = base / 2;
    half + half.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

/// How long a link must have been up for its end to count as a loss of a
/// working link rather than a flap: 1 s, or `backoff_max` if smaller.
fn stable_after(fc: &crate::config::FederationConfig) -> Duration {
    fc.backoff_max.min(Duration::from_secs(1))
}

pub(crate) async fn dial_loop(ctx: Arc<NodeCtx>, shared: Arc<LinkShared>, spec: PeerSpec) {
    let fc = &ctx.cfg.federation;
    let mut attempt: u32 = 0;
    let mut shutdown = ctx.shutdown_rx();
    let generation = ctx.fed.generation();
    loop {
        if ctx.is_shutting_down() || ctx.fed.generation() != generation {
            return;
        }
        // Stand by while another link (one the peer dialled) connects us.
        let mut connected = ctx.fed.connected.subscribe();
        if connected.borrow().contains(spec.node_id.as_str()) {
            shared.set_state(LinkState::Backoff);
            tokio::select! {
                _ = connected.wait_for(|s| !s.contains(spec.node_id.as_str())) => {}
                _ = shutdown.changed() => return,
            }
            // Both ends may have been waiting for the same link to go:
            // jitter keeps them from redialling each other in lockstep.
            tokio::select! {
                _ = tokio::time::sleep(jittered(fc.backoff_initial)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        shared.set_state(LinkState::Connecting);
        let mut delay = None;
        match dial(&ctx, &shared, &spec).await {
            Ok(streams) => {
                let t0 = Instant::now();
                if let Err(e) = serve_dialled(&ctx, &shared, &spec, streams).await {
                    if matches!(e, LinkError::Duplicate) {
                        delay = Some(fc.backoff_max);
                    }
                    info!(peer = %spec.node_id, error = %e, "peer link ended");
                }
                // A link that stayed up for a while starts its backoff over,
                // so the first redial after a peer's restart (noticed at once
                // through a stateless reset) comes within `backoff_initial`
                // however often that peer restarted before. A link that keeps
                // ending right after coming up still backs off.
                if t0.elapsed() >= stable_after(fc) {
                    attempt = 0;
                }
            }
            Err(e) => {
                counter!(m::LINK_CONNECT_FAILURES_TOTAL, "reason" => e.label()).increment(1);
                if matches!(e, LinkError::Duplicate) {
                    delay = Some(fc.backoff_max);
                }
                // The error says which: "cannot resolve HOST: why" or
                // "cannot connect to ADDR: why" (also the metric's reason).
                info!(peer = %spec.node_id, addr = %spec.addr, reason = e.label(), error = %e, "cannot establish peer link");
            }
        }
        if ctx.is_shutting_down() {
            return;
        }
        shared.set_state(LinkState::Backoff);
        counter!(m::LINK_RECONNECTS_TOTAL).increment(1);
        let base = delay.unwrap_or_else(|| {
            fc.backoff_initial
                .saturating_mul(1u32 << attempt.min(16))
                .min(fc.backoff_max)
        });
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(jittered(base)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

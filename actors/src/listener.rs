//! The QUIC listener actor: accepts connections and hands each to its
//! admission (a client connection then runs as its own task, which cleans up
//! after itself however it ends; peer links are supervised by the federation
//! actor).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::admission::{Admission, Attempt, Verdict};
use crate::ctx::NodeCtx;
use crate::logthrottle::Kind;
use crate::metrics as m;

/// The listener takes no messages: it accepts.
pub(crate) enum ListenerMsg {}

pub(crate) struct ListenerActor;

pub(crate) struct ListenerState {
    accept: JoinHandle<()>,
}

impl Actor for ListenerActor {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        _myself: ActorRef<ListenerMsg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<ListenerState, ActorProcessingErr> {
        let endpoint = ctx.endpoint.clone();
        let actx = ctx;
        let accept = tokio::spawn(async move {
            let mut shutdown = actx.shutdown_rx();
            let mut admission = Admission::new(actx.cfg.admission.clone());
            let mut pruned = Instant::now();
            loop {
                let incoming = tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    i = endpoint.accept() => match i { Some(i) => i, None => break },
                };
                let now = Instant::now();
                if now.duration_since(pruned) >= Admission::PRUNE_EVERY {
                    admission.prune(now);
                    pruned = now;
                }
                let in_progress = actx.handshakes.load(Ordering::Relaxed);
                let verdict = if actx.conns.len() >= actx.cfg.max_connections {
                    m::handshake("refused_capacity");
                    Verdict::Refuse("refused_connections")
                } else {
                    let source = incoming.remote_address().ip();
                    let attempt = Attempt {
                        source,
                        validated: incoming.remote_address_validated(),
                        may_retry: incoming.may_retry(),
                        source_in_progress: actx.source_handshakes.get(&source).map_or(0, |n| *n),
                    };
                    admission.handle_incoming(now, attempt, in_progress)
                };
                counter!(m::INCOMING_TOTAL, "outcome" => verdict.label()).increment(1);
                if verdict != Verdict::Accept && actx.log.note(Kind::Incoming, verdict.label()) {
                    info!(
                        remote = %incoming.remote_address(),
                        outcome = verdict.label(),
                        handshakes_in_progress = in_progress,
                        max_handshakes = actx.cfg.admission.max_handshakes,
                        connections = actx.conns.len(),
                        "connection attempt turned away before its handshake ({}); further ones are summed up every {} s",
                        explain(verdict),
                        crate::logthrottle::WINDOW.as_secs()
                    );
                }
                match verdict {
                    Verdict::Accept => {
                        let guard =
                            crate::ctx::HandshakeGuard::new(&actx, incoming.remote_address().ip());
                        let c = Arc::clone(&actx);
                        tokio::spawn(async move {
                            if let Err(e) = crate::accept::accept(c, incoming, guard).await {
                                debug!(error = %e, "connection setup failed");
                            }
                        });
                    }
                    // A Retry is refused only for an attempt that already
                    // answered one (the admission asked `may_retry`).
                    Verdict::Retry => {
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().ignore();
                        }
                    }
                    Verdict::Refuse(_) => incoming.refuse(),
                    Verdict::Ignore(_) => incoming.ignore(),
                }
            }
        });
        Ok(ListenerState { accept })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ListenerMsg>,
        st: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        st.accept.abort();
        Ok(())
    }
}

/// What an operator reads for a turned-away attempt.
fn explain(v: Verdict) -> &'static str {
    match v {
        Verdict::Accept => "accepted",
        Verdict::Retry => {
            "handshakes in progress passed the Retry threshold: unvalidated addresses are asked to prove themselves with a QUIC Retry"
        }
        Verdict::Refuse("refused_connections") => "max_connections reached",
        Verdict::Refuse("refused_capacity") | Verdict::Ignore(_) => {
            "max_handshakes in progress reached"
        }
        Verdict::Refuse(_) => {
            "this source address opened connections faster than per_source_rate while the node was under pressure"
        }
    }
}

//! RPC at the front door: [`RpcStream`] (a caller's streamed responses)
//! and [`Request`] (a call to answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::error::SlimError;
use crate::session::rpc::{Responder, ResponseStream, RpcError, RpcRequest};

/// The responses of a streaming call.
#[derive(Clone)]
pub struct RpcStream {
    pub(super) inner: Arc<tokio::sync::Mutex<ResponseStream>>,
}

impl RpcStream {
    /// The next response; `Ok(None)` after the end of the stream.
    pub async fn next(&self) -> Result<Option<Bytes>, SlimError> {
        match self.inner.lock().await.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(e.into()),
        }
    }
}

/// One RPC to answer: [`Request::reply`] once, or [`Request::send`] items
/// then [`Request::end`]; or [`Request::fail`].
#[derive(Clone)]
pub struct Request {
    pub payload: Bytes,
    /// The caller's full name.
    pub caller: String,
    /// The caller's SPIFFE ID as its node authenticated it.
    pub caller_spiffe_id: Option<String>,
    /// When the caller stops waiting.
    pub deadline: tokio::time::Instant,
    responder: Arc<tokio::sync::Mutex<Option<Responder>>>,
    cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Sticky: once seen cancelled, stays so after the answer took the responder.
    seen_cancelled: Arc<AtomicBool>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("caller", &self.caller)
            .finish()
    }
}

impl Request {
    pub(super) fn new(r: RpcRequest) -> Request {
        let responder = Arc::new(tokio::sync::Mutex::new(Some(r.responder)));
        let probe = Arc::clone(&responder);
        Request {
            payload: r.payload,
            caller: r.from.to_string(),
            caller_spiffe_id: r.from_identity.as_deref().map(str::to_owned),
            deadline: r.deadline,
            responder,
            cancelled: Arc::new(move || match probe.try_lock() {
                Ok(g) => g.as_ref().is_some_and(Responder::is_cancelled),
                Err(_) => false,
            }),
            seen_cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the caller gave up (cancelled, or its deadline passed).
    pub fn is_cancelled(&self) -> bool {
        if self.seen_cancelled.load(Ordering::Relaxed) {
            return true;
        }
        let c = (self.cancelled)() || tokio::time::Instant::now() >= self.deadline;
        if c {
            self.seen_cancelled.store(true, Ordering::Relaxed);
        }
        c
    }

    /// Takes the responder to answer with; an answer to a call the caller
    /// gave up on is refused (it would go nowhere).
    async fn take(&self) -> Result<Responder, SlimError> {
        let mut g = self.responder.lock().await;
        if g.as_ref().is_some_and(Responder::is_cancelled) {
            self.seen_cancelled.store(true, Ordering::Relaxed);
            // Dropped unanswered: the responder side forgets the call.
            g.take();
            return Err(SlimError::Closed("the caller cancelled the call".into()));
        }
        g.take()
            .ok_or_else(|| SlimError::Closed("this request was already answered".into()))
    }

    pub async fn reply(&self, payload: &[u8]) -> Result<(), SlimError> {
        Ok(self
            .take()
            .await?
            .reply(Bytes::copy_from_slice(payload))
            .await?)
    }

    /// One response of a stream.
    pub async fn send(&self, payload: &[u8]) -> Result<(), SlimError> {
        let mut g = self.responder.lock().await;
        let r = g
            .as_mut()
            .ok_or_else(|| SlimError::Closed("this request was already answered".into()))?;
        r.send(Bytes::copy_from_slice(payload))
            .await
            .map_err(|e| match e {
                RpcError::Remote(r) => SlimError::Closed(r),
                e => e.into(),
            })
    }

    /// End of the stream.
    pub async fn end(&self) -> Result<(), SlimError> {
        Ok(self.take().await?.end().await?)
    }

    pub async fn fail(&self, reason: &str) -> Result<(), SlimError> {
        Ok(self.take().await?.fail(reason).await?)
    }
}

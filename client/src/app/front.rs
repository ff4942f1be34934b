//! [`App`]: the front door's handle, one per agent.

use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use slim_auth::{IdentitySource, IdentitySourceConfig, TrustBundles};
use slim_mls::MlsIdentity;
use slim_wire::{Mode, Name};
use tokio::sync::mpsc;

use super::config::{
    AppConfig, CreateOptions, IdentityConfig, JoinOptions, SessionOptions, parse_name, parse_url,
};
use super::error::SlimError;
use super::rpc::{Request, RpcStream};
use super::session::Session;
use super::types::{Message, Role};
use crate::channel::{Channel, ChannelOptions, GroupCtl, Invitations};
use crate::client::Client;
use crate::config::{Backoff, ClientConfig, Credentials};
use crate::event::Event;
use crate::session::channel::{ChannelConfig, ChannelError};
use crate::session::p2p::{P2pConfig, P2pListener, P2pSession};
use crate::session::rpc::{RpcClient, RpcConfig, RpcServer};
use crate::session::{SessionError, SessionMux};

/// Raw-publish refusals waiting to be reported by [`App::flush`].
const MAX_UNREPORTED: usize = 1024;
/// Raw publishes remembered for matching refusals.
const MAX_TRACKED_RAW: usize = 64 * 1024;
/// Incoming sessions waiting for [`App::accept`].
const INCOMING: usize = 256;

struct AppInner {
    mux: SessionMux,
    raw: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    source: Option<IdentitySource>,
    mls: Option<MlsIdentity>,
    /// Msg ids of raw publishes since the last flush.
    raw_ids: Mutex<(HashSet<u64>, VecDeque<u64>)>,
    /// Refusals of raw publishes seen by `receive` and not yet reported.
    refusals: Mutex<VecDeque<SlimError>>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Result<Session, SlimError>>>,
    rpc_client: std::sync::OnceLock<RpcClient>,
    rpc_server: tokio::sync::Mutex<Option<RpcServer>>,
    closed: AtomicBool,
    /// Set to `true` by [`App::close`]: wakes calls waiting for something
    /// (requests, messages, sessions) so that they end with `Closed`.
    closing: tokio::sync::watch::Sender<bool>,
    /// The RPC server exists (`serve` need not wait for its lock).
    serving: AtomicBool,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for AppInner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A connected agent. Cheap to clone; every clone is the same agent.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("name", self.name()).finish()
    }
}

async fn start_identity(
    cfg: &IdentityConfig,
) -> Result<(Credentials, Option<IdentitySource>), SlimError> {
    let start = |c: IdentitySourceConfig| async move {
        IdentitySource::start(c)
            .await
            .map_err(|e| SlimError::Identity(e.to_string()))
    };
    Ok(match cfg {
        IdentityConfig::WorkloadApi { socket } => {
            let s = start(IdentitySourceConfig::spire(socket.clone())).await?;
            (Credentials::Source(s.clone()), Some(s))
        }
        IdentityConfig::Files { dir } => {
            let s = start(IdentitySourceConfig::Files { dir: dir.clone() }).await?;
            (Credentials::Source(s.clone()), Some(s))
        }
        IdentityConfig::Jwt { audience, socket } => {
            let s = start(IdentitySourceConfig::spire(socket.clone())).await?;
            (
                Credentials::Jwt {
                    source: s.clone(),
                    audience: audience.clone(),
                },
                Some(s),
            )
        }
        IdentityConfig::SharedSecret {
            secret,
            bundle,
            trust_domain,
        } => {
            let pem = std::fs::read(bundle).map_err(|e| {
                SlimError::Identity(format!("trust bundle {}: {e}", bundle.display()))
            })?;
            let bundles = TrustBundles::from_pem(trust_domain, &pem)
                .map_err(|e| SlimError::Identity(format!("{}: {e}", bundle.display())))?;
            tracing::warn!(
                "INSECURE: authenticating to the node with a shared secret (development only)"
            );
            (
                Credentials::SharedSecret {
                    secret: secret.clone(),
                    bundles,
                },
                None,
            )
        }
        IdentityConfig::Source(s) => (Credentials::Source(s.clone()), Some(s.clone())),
    })
}

impl App {
    /// Obtains the identity, dials the node and registers `cfg.name`. Later
    /// connection drops are repaired in the background (backoff with jitter,
    /// subscriptions restored).
    pub async fn connect(cfg: AppConfig) -> Result<App, SlimError> {
        // Checked before the identity starts, so a bad URL is `Invalid`.
        parse_url(&cfg.url)?;
        slim_framed::datagrams::check_ceiling("max_udp_payload", cfg.max_udp_payload)
            .map_err(SlimError::Invalid)?;
        let name = parse_name(&cfg.name)?;
        let (credentials, source) = start_identity(&cfg.identity).await?;
        let mut ccfg = ClientConfig::for_url(&cfg.url, name, credentials).await?;
        ccfg.connect_timeout = cfg.connect_timeout;
        ccfg.request_timeout = cfg.request_timeout;
        ccfg.metrics = cfg.metrics;
        ccfg.on_disconnect = cfg.on_disconnect;
        ccfg.max_udp_payload = cfg.max_udp_payload;
        let client = Client::connect(ccfg).await?;
        // MLS binds to the SVID the node authenticated us with.
        let mls = match &source {
            Some(s) => {
                Some(MlsIdentity::new(&s.current()).map_err(|e| SlimError::Mls(e.to_string()))?)
            }
            None => None,
        };
        let (mux, raw) = SessionMux::new(client);

        // Inbound sessions and invitations are accepted from the start, so
        // a peer opening a session or a moderator inviting us never races
        // the application's first `accept`.
        let (in_tx, in_rx) = mpsc::channel(INCOMING);
        let mut p2p_cfg = P2pConfig {
            mls: mls.clone(),
            ..P2pConfig::default()
        };
        p2p_cfg.open_timeout = Duration::from_millis(500);
        let listener = P2pListener::new(&mux, p2p_cfg).map_err(SlimError::from)?;
        let invitations = Invitations::listen(&mux, 64).map_err(SlimError::from)?;
        let (closing, closed_rx) = tokio::sync::watch::channel(false);
        let t1 = tokio::spawn(accept_p2p(listener, in_tx.clone(), closed_rx.clone()));
        let t2 = tokio::spawn(accept_invitations(
            invitations,
            mls.clone(),
            source.clone(),
            in_tx,
            closed_rx,
        ));
        Ok(App {
            inner: Arc::new(AppInner {
                mux,
                raw: tokio::sync::Mutex::new(raw),
                source,
                mls,
                raw_ids: Mutex::new((HashSet::new(), VecDeque::new())),
                refusals: Mutex::new(VecDeque::new()),
                incoming: tokio::sync::Mutex::new(in_rx),
                rpc_client: std::sync::OnceLock::new(),
                rpc_server: tokio::sync::Mutex::new(None),
                closed: AtomicBool::new(false),
                closing,
                serving: AtomicBool::new(false),
                tasks: vec![t1.abort_handle(), t2.abort_handle()],
            }),
        })
    }

    /// This agent's registered full name (with its instance id).
    pub fn name(&self) -> &Name {
        self.inner.mux.client().name()
    }

    /// The SPIFFE ID the node authenticated this agent as.
    pub fn spiffe_id(&self) -> Option<String> {
        self.inner.mux.client().authenticated_as()
    }

    /// The underlying session multiplexer (low-level API).
    pub fn mux(&self) -> &SessionMux {
        &self.inner.mux
    }

    fn check_open(&self) -> Result<(), SlimError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SlimError::Closed("the app is closed".into()));
        }
        Ok(())
    }

    /// Sessions watch this to end when the app closes.
    fn closed_rx(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Resolves once [`App::close`] has been called.
    async fn closing(&self) {
        let mut rx = self.inner.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// `f`, unless the app closes first.
    async fn unless_closed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, SlimError>>,
    ) -> Result<T, SlimError> {
        tokio::select! {
            r = f => r,
            () = self.closing() => Err(SlimError::Closed("the app is closed".into())),
        }
    }

    /// Declares interest in `name`; returns once the node acknowledged it.
    pub async fn subscribe(&self, name: &str) -> Result<(), SlimError> {
        self.check_open()?;
        let n = parse_name(name)?;
        Ok(self.inner.mux.client().subscribe(&n).await?)
    }

    pub async fn unsubscribe(&self, name: &str) -> Result<(), SlimError> {
        self.check_open()?;
        let n = parse_name(name)?;
        Ok(self.inner.mux.client().unsubscribe(&n).await?)
    }

    /// Publishes `payload` to `name` and returns its message id once queued.
    /// A refusal by the node arrives asynchronously: [`App::flush`] reports it.
    pub async fn publish(&self, name: &str, mode: Mode, payload: &[u8]) -> Result<u64, SlimError> {
        self.check_open()?;
        let n = parse_name(name)?;
        if mode == Mode::Unicast && !n.has_instance() {
            return Err(SlimError::InvalidName(format!(
                "unicast needs a full name with an instance id, got {name:?}"
            )));
        }
        let client = self.inner.mux.client();
        let id = client.reserve_msg_id();
        {
            let mut t = self.inner.raw_ids.lock();
            if t.1.len() >= MAX_TRACKED_RAW
                && let Some(old) = t.1.pop_front()
            {
                t.0.remove(&old);
            }
            t.0.insert(id);
            t.1.push_back(id);
        }
        client.publish_with_id(&n, mode, 0, id, payload).await?;
        Ok(id)
    }

    /// A round trip to the node: once it returns, the node has processed
    /// every raw publish made before it. Raises the first refusal (policy,
    /// no route) the node reported for those publishes since the last flush.
    pub async fn flush(&self) -> Result<(), SlimError> {
        self.check_open()?;
        let client = self.inner.mux.client();
        // The publishes this flush answers for: those made before its ping
        // (later ones are left to the next flush).
        let ids: HashSet<u64> = {
            let mut t = self.inner.raw_ids.lock();
            t.1.clear();
            std::mem::take(&mut t.0)
        };
        client.flush().await;
        client.ping().await?;
        let mut first = self.inner.refusals.lock().pop_front();
        for e in client.take_errors(|id| ids.contains(&id)) {
            let err = SlimError::from_code(
                e.code,
                format!(
                    "{} (message {} to {})",
                    e.reason,
                    e.msg_id.unwrap_or_default(),
                    e.name.as_ref().map(Name::as_str).unwrap_or("?")
                ),
            );
            tracing::warn!(error = %err, "the node refused a publish");
            if first.is_none() {
                first = Some(err);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The next raw message (not part of a session).
    pub async fn receive(&self) -> Result<Message, SlimError> {
        self.check_open()?;
        self.unless_closed(self.receive_raw()).await
    }

    async fn receive_raw(&self) -> Result<Message, SlimError> {
        let mut rx = self.inner.raw.lock().await;
        loop {
            match rx.recv().await {
                Some(Event::Message(d)) => {
                    return Ok(Message {
                        payload: d.payload,
                        source: d.from.to_string(),
                        spiffe_id: d.from_identity.as_deref().map(str::to_owned),
                        name: d.name.to_string(),
                        seq: None,
                        epoch: None,
                        mode: Some(d.mode),
                    });
                }
                Some(Event::Error(e)) => {
                    // A refusal of a raw publish: `flush` reports it to the
                    // publisher; log it so it is never only a counter.
                    tracing::warn!(code = e.code.as_str(), reason = %e.reason, "the node refused a publish");
                    // Only a refusal of a raw publish that `flush` has not
                    // reported yet (it reports from the same record): not
                    // one it already raised, nor one about a session's
                    // untracked traffic.
                    let raw = e
                        .msg_id
                        .is_some_and(|id| self.inner.raw_ids.lock().0.contains(&id));
                    let unreported = raw
                        && !self
                            .inner
                            .mux
                            .client()
                            .take_errors(|id| Some(id) == e.msg_id)
                            .is_empty();
                    let mut q = self.inner.refusals.lock();
                    if unreported && q.len() < MAX_UNREPORTED {
                        q.push_back(SlimError::from_code(e.code, e.reason));
                    }
                }
                None => return Err(SlimError::Closed("the app is closed".into())),
            }
        }
    }

    fn p2p_config(&self, opts: &SessionOptions) -> Result<P2pConfig, SlimError> {
        let mut cfg = if opts.reliable {
            P2pConfig::default()
        } else {
            P2pConfig::unreliable()
        };
        if opts.mls {
            cfg.mls = Some(self.mls_identity()?);
        }
        if let Some(t) = opts.timeout {
            // `open_attempts` transmissions of `open_timeout` each.
            let per = cfg.open_timeout.max(Duration::from_millis(50));
            cfg.open_attempts = (t.as_millis() / per.as_millis()).clamp(1, 1000) as u32;
        }
        Ok(cfg)
    }

    fn mls_identity(&self) -> Result<MlsIdentity, SlimError> {
        self.inner.mls.clone().ok_or_else(|| {
            SlimError::Mls(
                "MLS needs an X.509-SVID identity (not available with a shared secret)".into(),
            )
        })
    }

    /// Opens a point-to-point session to `service` (anycast: whichever
    /// instance answers is the peer from then on).
    pub async fn open_session(
        &self,
        service: &str,
        opts: SessionOptions,
    ) -> Result<Session, SlimError> {
        self.check_open()?;
        let n = parse_name(service)?;
        let cfg = self.p2p_config(&opts)?;
        let s = P2pSession::open(&self.inner.mux, &n, cfg).await?;
        Ok(Session::p2p(s, Role::Initiator, opts.mls, self.closed_rx()))
    }

    /// The next session opened to this agent, or channel it was invited into.
    pub async fn accept(&self) -> Result<Session, SlimError> {
        self.check_open()?;
        self.unless_closed(async {
            let mut rx = self.inner.incoming.lock().await;
            match rx.recv().await {
                Some(r) => r,
                None => Err(SlimError::Closed("the app is closed".into())),
            }
        })
        .await
    }

    fn channel_options(&self, config: ChannelConfig) -> Result<ChannelOptions, SlimError> {
        let identity = if config.mls {
            Some(self.mls_identity()?)
        } else {
            None
        };
        let mut o = ChannelOptions::new(config, identity);
        o.rotation = self.inner.source.as_ref().map(IdentitySource::subscribe);
        Ok(o)
    }

    /// Creates the group channel `name` with this agent as its moderator.
    pub async fn create_channel(
        &self,
        name: &str,
        opts: CreateOptions,
    ) -> Result<Session, SlimError> {
        self.check_open()?;
        let n = parse_name(name)?;
        let config = ChannelConfig {
            mls: opts.mls,
            admission: opts.admission,
            ..ChannelConfig::default()
        };
        let copts = self.channel_options(config)?;
        let m = Channel::create(&self.inner.mux, &n, copts).await?;
        Ok(Session::group(
            n,
            GroupCtl::from(m),
            Role::Moderator,
            opts.mls,
            self.closed_rx(),
        ))
    }

    /// Joins the channel `name` by request, retrying with backoff until the
    /// moderator admits us, refuses ([`SlimError::JoinRefused`]), the node
    /// refuses ([`SlimError::PermissionDenied`]) or `opts.timeout` passes.
    pub async fn join_channel(&self, name: &str, opts: JoinOptions) -> Result<Session, SlimError> {
        self.check_open()?;
        let n = parse_name(name)?;
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let mut attempt = 0u32;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(SlimError::Timeout(format!(
                    "no moderator of {name} admitted us within {:?} ({attempt} join attempts)",
                    opts.timeout
                )));
            }
            let config = ChannelConfig {
                mls: opts.mls,
                join_timeout: left.min(Duration::from_secs(5)),
                ..ChannelConfig::default()
            };
            let copts = self.channel_options(config)?;
            attempt += 1;
            match Channel::join(&self.inner.mux, &n, None, copts).await {
                Ok(m) => {
                    let ctl = GroupCtl::from(m);
                    return Ok(Session::group(
                        n,
                        ctl,
                        Role::Member,
                        opts.mls,
                        self.closed_rx(),
                    ));
                }
                Err(e @ (ChannelError::JoinRefused { .. } | ChannelError::Denied { .. })) => {
                    return Err(e.into());
                }
                Err(ChannelError::JoinFailed { reason }) => {
                    tracing::debug!(channel = name, attempt, %reason, "join not answered yet; retrying");
                }
                Err(ChannelError::Session(SessionError::AlreadyRegistered(_))) => {
                    return Err(SlimError::Invalid(format!(
                        "this app is already in channel {name}"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            let wait = Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            }
            .delay(attempt)
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            tokio::time::sleep(wait).await;
        }
    }

    fn rpc(&self) -> Result<&RpcClient, SlimError> {
        Ok(self
            .inner
            .rpc_client
            .get_or_init(|| RpcClient::new(&self.inner.mux, RpcConfig::default())))
    }

    /// A unary call to `service` with a deadline.
    pub async fn request(
        &self,
        service: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, SlimError> {
        self.check_open()?;
        let n = parse_name(service)?;
        Ok(self
            .rpc()?
            .request(&n, Bytes::copy_from_slice(payload), timeout)
            .await?)
    }

    /// A streaming call: responses in order until the end of the stream or
    /// the deadline. Dropping the stream cancels the call.
    pub async fn request_stream(
        &self,
        service: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<RpcStream, SlimError> {
        self.check_open()?;
        let n = parse_name(service)?;
        let s = self
            .rpc()?
            .request_stream(&n, Bytes::copy_from_slice(payload), timeout)
            .await?;
        Ok(RpcStream {
            inner: Arc::new(tokio::sync::Mutex::new(s)),
        })
    }

    /// The next RPC to this agent's service. The first call starts serving:
    /// until then, calls to this agent fail fast with "no responder".
    pub async fn next_request(&self) -> Result<Request, SlimError> {
        self.check_open()?;
        // Waiting holds the server's lock: `close` must not wait for it.
        self.unless_closed(async {
            let mut server = self.inner.rpc_server.lock().await;
            if server.is_none() {
                *server = Some(RpcServer::new(&self.inner.mux, RpcConfig::default())?);
                self.inner.serving.store(true, Ordering::Release);
            }
            let Some(s) = server.as_mut() else {
                return Err(SlimError::Closed("the app is closed".into()));
            };
            match s.next().await {
                Some(r) => Ok(Request::new(r)),
                None => Err(SlimError::Closed("the app is closed".into())),
            }
        })
        .await
    }

    /// Starts serving RPCs now (without waiting for a request).
    pub async fn serve(&self) -> Result<(), SlimError> {
        self.check_open()?;
        // A `next_request` waiting holds the lock, having started the server.
        if self.inner.serving.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut server = self.inner.rpc_server.lock().await;
        if server.is_none() {
            *server = Some(RpcServer::new(&self.inner.mux, RpcConfig::default())?);
            self.inner.serving.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Closes the connection after sending what is queued. Idempotent;
    /// afterwards every call fails with [`SlimError::Closed`]. Sessions
    /// still open end as the connection goes (close them first to have
    /// their peers told).
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.closing.send_replace(true);
        for t in &self.inner.tasks {
            t.abort();
        }
        self.inner.rpc_server.lock().await.take();
        let client = self.inner.mux.client();
        client.flush().await;
        client.shutdown().await;
    }
}

async fn accept_p2p(
    mut l: P2pListener,
    out: mpsc::Sender<Result<Session, SlimError>>,
    closed: tokio::sync::watch::Receiver<bool>,
) {
    while let Some(s) = l.accept().await {
        let mls = s.is_mls();
        if out
            .send(Ok(Session::p2p(s, Role::Responder, mls, closed.clone())))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn accept_invitations(
    mut inv: Invitations,
    mls: Option<MlsIdentity>,
    source: Option<IdentitySource>,
    out: mpsc::Sender<Result<Session, SlimError>>,
    closed: tokio::sync::watch::Receiver<bool>,
) {
    while let Some(i) = inv.next().await {
        let config = ChannelConfig {
            mls: i.mls,
            ..ChannelConfig::default()
        };
        if i.mls && mls.is_none() {
            tracing::warn!(channel = %i.channel, "declining an MLS channel invitation: no SVID to bind MLS to");
            let _ = i.decline("this agent has no X.509-SVID for MLS").await;
            continue;
        }
        let mut opts = ChannelOptions::new(config, if i.mls { mls.clone() } else { None });
        opts.rotation = source.as_ref().map(IdentitySource::subscribe);
        let (out, closed) = (out.clone(), closed.clone());
        let (channel, use_mls) = (i.channel.clone(), i.mls);
        // Each acceptance waits for its Welcome; do not hold up the others.
        tokio::spawn(async move {
            let r = match i.accept(opts).await {
                Ok(m) => Ok(Session::group(
                    channel,
                    GroupCtl::from(m),
                    Role::Member,
                    use_mls,
                    closed,
                )),
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "accepting a channel invitation failed");
                    Err(e.into())
                }
            };
            let _ = out.send(r).await;
        });
    }
}

//! Where our identity comes from, and how it rotates.
//!
//! An [`IdentitySource`] holds the current [`Identity`] (X.509-SVID, key, trust
//! bundles) and replaces it when the backing store rotates it:
//!
//! * **SPIRE** ([`IdentitySourceConfig::Spire`]): the SPIFFE Workload API over the
//!   agent's Unix socket, through the `spiffe` crate's `X509Source` — the same code
//!   path whether the agent is SPIRE or `slim-devspire`. The agent streams a fresh
//!   SVID before the old one expires, and new bundles as the CA rotates.
//! * **Files** ([`IdentitySourceConfig::Files`]): the spiffe-helper layout
//!   (`tls.crt`, `tls.key`, `svid_bundle.pem`), polled every second and reloaded
//!   when a file is replaced.
//! * **Dev** ([`IdentitySourceConfig::Dev`]): a file-backed [`DevCa`] in-process,
//!   re-issuing the SVID at half its lifetime.
//!
//! TLS configs built with [`server_config_from_source`](crate::tls::server_config_from_source)
//! / [`client_config_from_source`](crate::tls::client_config_from_source) read the
//! latest SVID and bundles at each handshake, so rotation reaches new connections
//! immediately and leaves established ones alone.
//!
//! # Reconnection (SPIRE)
//!
//! `spiffe::X509Source` (v0.19) runs a supervisor task that re-dials the Workload
//! API with exponential backoff and jitter ([`SPIRE_RECONNECT_MIN`] to
//! [`SPIRE_RECONNECT_MAX`]) whenever the stream fails or ends, and keeps serving
//! the last good SVID meanwhile. An agent restart is therefore invisible to
//! connections; the `spire_reconnects_after_agent_restart` test checks it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::sign::SigningKey;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

use crate::identity::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
use crate::jwt::{JWT_BUNDLE_FILE, JwtBundles, JwtSigner};
use crate::{AuthError, DevCa, Identity, SharedBundles, SpiffeId, TrustBundles, x509};

/// Environment variable naming the Workload API endpoint (SPIFFE Workload Endpoint spec).
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";
/// Default bound on the first SVID fetch from the Workload API.
pub const DEFAULT_SPIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files source checks the spiffe-helper files for replacement.
pub const FILES_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// First retry delay after the Workload API stream breaks.
pub const SPIRE_RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Retry delay cap while the Workload API is unreachable.
pub const SPIRE_RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Default lifetime of JWT-SVIDs signed by the dev source.
pub const DEV_JWT_TTL: Duration = Duration::from_secs(300);

/// Which identity source to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySourceConfig {
    /// The SPIFFE Workload API (a SPIRE agent, or `slim-devspire`).
    Spire {
        /// Endpoint: `unix:///path`, `unix:/path`, a bare absolute path, or
        /// `tcp://ip:port`. `None` reads [`SPIFFE_ENDPOINT_SOCKET`].
        socket: Option<String>,
        /// Bound on the initial fetch; [`IdentitySource::start`] fails after it.
        initial_timeout: Duration,
    },
    /// spiffe-helper files in `dir`, watched for replacement.
    Files {
        /// Directory holding `tls.crt`, `tls.key`, `svid_bundle.pem` (and
        /// optionally `jwt_bundle.json`).
        dir: PathBuf,
    },
    /// An in-process development CA (created in `ca_dir` if absent).
    Dev {
        /// CA directory (`ca.crt`, `ca.key`, `jwt.key`).
        ca_dir: PathBuf,
        /// Our SPIFFE ID.
        id: SpiffeId,
        /// SVID lifetime; the SVID is re-issued at half of it.
        ttl: Duration,
    },
}

impl IdentitySourceConfig {
    /// SPIRE at `socket` (or `$SPIFFE_ENDPOINT_SOCKET`) with [`DEFAULT_SPIRE_TIMEOUT`].
    pub fn spire(socket: Option<String>) -> Self {
        IdentitySourceConfig::Spire {
            socket,
            initial_timeout: DEFAULT_SPIRE_TIMEOUT,
        }
    }
}

/// Turns a configured socket into a Workload API endpoint URI.
pub fn normalize_endpoint(socket: &str) -> String {
    if socket.starts_with('/') {
        format!("unix://{socket}")
    } else {
        socket.to_string()
    }
}

/// State shared between the handles, the refresh task and the TLS resolvers.
struct Shared {
    tx: watch::Sender<Arc<Identity>>,
    certified: RwLock<Arc<CertifiedKey>>,
    bundles: SharedBundles,
    /// Refresh attempts that failed (see [`IdentitySource::refresh_failures`]).
    failures: Arc<AtomicU64>,
}

impl Shared {
    fn new(identity: Identity, failures: Arc<AtomicU64>) -> Result<Arc<Shared>, AuthError> {
        let certified = certify(&identity)?;
        let bundles = Arc::new(RwLock::new(identity.bundles.clone()));
        let (tx, _) = watch::channel(Arc::new(identity));
        Ok(Arc::new(Shared {
            tx,
            certified: RwLock::new(certified),
            bundles,
            failures,
        }))
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Installs a new identity: TLS material first, then watchers are told.
    fn publish(&self, identity: Identity) -> Result<(), AuthError> {
        let certified = certify(&identity)?;
        *self
            .certified
            .write()
            .unwrap_or_else(PoisonError::into_inner) = certified;
        let bundles_changed = {
            let mut b = self.bundles.write().unwrap_or_else(PoisonError::into_inner);
            let changed = *b != identity.bundles;
            *b = identity.bundles.clone();
            changed
        };
        tracing::info!(
            id = %identity.spiffe_id,
            not_after = %crate::explain::rfc3339(identity.not_after),
            bundles_changed,
            "identity rotated"
        );
        self.tx.send_replace(Arc::new(identity));
        Ok(())
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        self.certified
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Built once per rotation, not per handshake.
fn certify(identity: &Identity) -> Result<Arc<CertifiedKey>, AuthError> {
    let provider = rustls::crypto::ring::default_provider();
    let key: Arc<dyn SigningKey> = provider
        .key_provider
        .load_private_key(identity.key.clone_key())?;
    let ck = CertifiedKey::new(identity.cert_chain.clone(), key);
    ck.keys_match().or_else(|e| match e {
        // Only a definite mismatch is fatal; "unknown" means the check is unsupported.
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
        e => Err(e),
    })?;
    Ok(Arc::new(ck))
}

/// A rustls certificate resolver presenting the source's latest SVID, for both
/// TLS roles. Build configs with [`crate::tls::server_config_from_source`] /
/// [`crate::tls::client_config_from_source`] rather than using it directly.
pub struct SourceCertResolver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SourceCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCertResolver")
            .field("id", &self.shared.tx.borrow().spiffe_id)
            .finish()
    }
}

impl ResolvesServerCert for SourceCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.shared.certified())
    }
}

impl ResolvesClientCert for SourceCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.shared.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

enum Backend {
    Spire {
        endpoint: String,
        initial_timeout: Duration,
        x509: spiffe::X509Source,
        jwt: OnceCell<spiffe::JwtSource>,
    },
    Files {
        dir: PathBuf,
    },
    Dev {
        // Boxed: the signer holds its key twice (ring for the public key,
        // jsonwebtoken for signing), larger than the other variants.
        signer: Box<JwtSigner>,
    },
}

struct Inner {
    shared: Arc<Shared>,
    backend: Backend,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Our identity, kept current. Cheap to clone; the background refresh stops when
/// the last clone is dropped (or at [`shutdown`](Self::shutdown)).
#[derive(Clone)]
pub struct IdentitySource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySource")
            .field("kind", &self.kind())
            .field("current", &self.current())
            .finish()
    }
}

impl IdentitySource {
    /// Starts the source: fetches/loads the first identity (bounded, for SPIRE, by
    /// `initial_timeout`) and spawns its refresh task. Needs a Tokio runtime.
    pub async fn start(cfg: IdentitySourceConfig) -> Result<IdentitySource, AuthError> {
        match cfg {
            IdentitySourceConfig::Spire {
                socket,
                initial_timeout,
            } => start_spire(socket, initial_timeout).await,
            IdentitySourceConfig::Files { dir } => start_files(dir).await,
            IdentitySourceConfig::Dev { ca_dir, id, ttl } => start_dev(ca_dir, id, ttl).await,
        }
    }

    fn from_parts(shared: Arc<Shared>, backend: Backend, stop: CancellationToken) -> Self {
        IdentitySource {
            inner: Arc::new(Inner {
                shared,
                backend,
                stop,
            }),
        }
    }

    /// `"spire"`, `"files"` or `"dev"`.
    pub fn kind(&self) -> &'static str {
        match self.inner.backend {
            Backend::Spire { .. } => "spire",
            Backend::Files { .. } => "files",
            Backend::Dev { .. } => "dev",
        }
    }

    /// The identity now.
    pub fn current(&self) -> Arc<Identity> {
        self.inner.shared.tx.borrow().clone()
    }

    /// Our SPIFFE ID now (it may change on rotation only if the agent's
    /// registration changed).
    pub fn spiffe_id(&self) -> SpiffeId {
        self.inner.shared.tx.borrow().spiffe_id.clone()
    }

    /// A receiver that sees every rotation (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Identity>> {
        self.inner.shared.tx.subscribe()
    }

    /// How many refresh attempts have failed since the source started:
    /// Workload API dials that did not connect (including the retries of a
    /// re-dial after the agent went away), updates without a usable SVID,
    /// SVID files that changed but do not load, failed dev re-issues. The
    /// last good identity keeps being served meanwhile; a count that keeps
    /// growing means it is not being refreshed.
    pub fn refresh_failures(&self) -> u64 {
        self.inner.shared.failures.load(Ordering::Relaxed)
    }

    /// The trust bundles, updated in place on rotation (for custom verifiers).
    pub fn shared_bundles(&self) -> SharedBundles {
        self.inner.shared.bundles.clone()
    }

    /// A resolver presenting the latest SVID.
    pub fn cert_resolver(&self) -> Arc<SourceCertResolver> {
        Arc::new(SourceCertResolver {
            shared: self.inner.shared.clone(),
        })
    }

    /// Fetches a JWT-SVID for `audience` for our SPIFFE ID.
    ///
    /// SPIRE: `FetchJWTSVID` through the Workload API; dev: signed locally (valid
    /// [`DEV_JWT_TTL`]); files: not available (spiffe-helper writes tokens only for
    /// audiences fixed in its own configuration).
    pub async fn fetch_jwt_svid(&self, audience: &str) -> Result<String, AuthError> {
        match &self.inner.backend {
            Backend::Spire { endpoint, .. } => {
                let jwt = self.jwt_source().await?;
                let id = spiffe::SpiffeId::new(self.spiffe_id().as_str()).map_err(|e| {
                    AuthError::WorkloadApi {
                        endpoint: endpoint.clone(),
                        cause: e.to_string(),
                    }
                })?;
                let svid = jwt
                    .fetch_jwt_svid_with_id([audience], Some(&id))
                    .await
                    .map_err(|e| AuthError::WorkloadApi {
                        endpoint: endpoint.clone(),
                        cause: format!("FetchJWTSVID: {}", error_chain(&e)),
                    })?;
                Ok(svid.token().to_string())
            }
            Backend::Dev { signer } => signer.sign(&self.spiffe_id(), &[audience], DEV_JWT_TTL),
            Backend::Files { dir } => Err(AuthError::Unsupported(format!(
                "the files identity source ({}) cannot mint JWT-SVIDs",
                dir.display()
            ))),
        }
    }

    /// The JWT bundles to validate peers' JWT-SVIDs with.
    ///
    /// SPIRE: the latest `FetchJWTBundles` update (streamed and kept current by a
    /// `spiffe::JwtSource`, started on first use); dev: the dev signer's key;
    /// files: `jwt_bundle.json` in the directory, read at each call.
    pub async fn jwt_bundles(&self) -> Result<JwtBundles, AuthError> {
        match &self.inner.backend {
            Backend::Spire { endpoint, .. } => {
                let jwt = self.jwt_source().await?;
                let set = jwt.bundle_set().map_err(|e| AuthError::WorkloadApi {
                    endpoint: endpoint.clone(),
                    cause: format!("JWT bundles: {}", error_chain(&e)),
                })?;
                jwt_bundles_from_spiffe(&set)
            }
            Backend::Dev { signer } => Ok(signer.bundles()),
            Backend::Files { dir } => {
                let td = self.spiffe_id().trust_domain().to_string();
                JwtBundles::from_json_file(&dir.join(JWT_BUNDLE_FILE), &td)
            }
        }
    }

    async fn jwt_source(&self) -> Result<&spiffe::JwtSource, AuthError> {
        let Backend::Spire {
            endpoint,
            initial_timeout,
            jwt,
            ..
        } = &self.inner.backend
        else {
            return Err(AuthError::Unsupported("not a SPIRE source".into()));
        };
        jwt.get_or_try_init(|| async {
            let build = spiffe::JwtSource::builder()
                .endpoint(endpoint)
                .reconnect_backoff(SPIRE_RECONNECT_MIN, SPIRE_RECONNECT_MAX)
                .initial_sync_timeout(*initial_timeout)
                .build();
            match tokio::time::timeout(*initial_timeout + Duration::from_secs(1), build).await {
                Ok(Ok(src)) => Ok(src),
                Ok(Err(e)) => Err(AuthError::WorkloadApi {
                    endpoint: endpoint.clone(),
                    cause: format!("JWT bundles: {}", error_chain(&e)),
                }),
                Err(_) => Err(AuthError::WorkloadApi {
                    endpoint: endpoint.clone(),
                    cause: format!("JWT bundles: no answer within {initial_timeout:?}"),
                }),
            }
        })
        .await
    }

    /// Stops the refresh task (and, for SPIRE, the Workload API streams). The
    /// current identity stays readable.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        if let Backend::Spire { x509, jwt, .. } = &self.inner.backend {
            let _ = x509.shutdown_with_timeout(Duration::from_secs(5)).await;
            if let Some(jwt) = jwt.get() {
                let _ = jwt.shutdown_with_timeout(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Renders an error and its sources as `a: b: c`, skipping repeats.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn identity_from_x509(
    svid: &spiffe::X509Svid,
    bundle_set: &spiffe::X509BundleSet,
) -> Result<Identity, AuthError> {
    let bad = |reason: String| AuthError::Svid(crate::SvidError::Malformed(reason));
    let cert_chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let leaf = cert_chain
        .first()
        .ok_or_else(|| bad("Workload API sent an empty certificate chain".into()))?;
    let info = x509::parse(leaf).map_err(bad)?;
    let spiffe_id = SpiffeId::parse(&svid.spiffe_id().to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let mut bundles = TrustBundles::new();
    for (td, bundle) in bundle_set.iter() {
        for ca in bundle.authorities() {
            bundles.add(td.as_str(), CertificateDer::from(ca.as_bytes().to_vec()));
        }
    }
    Ok(Identity {
        spiffe_id,
        cert_chain,
        key,
        bundles,
        not_after: x509::unix_to_system(info.not_after),
    })
}

fn identity_from_source(src: &spiffe::X509Source) -> Result<Identity, String> {
    let state = src.state();
    let svid = state.svid().map_err(|e| error_chain(&e))?;
    let ctx = state.context().map_err(|e| error_chain(&e))?;
    identity_from_x509(&svid, ctx.bundle_set()).map_err(|e| e.to_string())
}

fn jwt_bundles_from_spiffe(set: &spiffe::JwtBundleSet) -> Result<JwtBundles, AuthError> {
    let mut out = JwtBundles::new();
    for (td, bundle) in set.iter() {
        let keys: Vec<serde_json::Value> = bundle
            .jwt_authorities()
            .filter_map(|a| serde_json::from_slice(a.jwk_json()).ok())
            .collect();
        let doc = serde_json::json!({ "keys": keys }).to_string();
        out.set_jwks(td.as_str(), doc.as_bytes())?;
    }
    Ok(out)
}

async fn start_spire(
    socket: Option<String>,
    initial_timeout: Duration,
) -> Result<IdentitySource, AuthError> {
    let socket = match socket.filter(|s| !s.is_empty()) {
        Some(s) => s,
        None => std::env::var(SPIFFE_ENDPOINT_SOCKET)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::NoAgent {
                endpoint: format!("${SPIFFE_ENDPOINT_SOCKET}"),
                cause: "no socket configured and the variable is not set".into(),
            })?,
    };
    let endpoint = normalize_endpoint(&socket);
    let parsed = spiffe::transport::Endpoint::parse(&endpoint).map_err(|e| AuthError::NoAgent {
        endpoint: endpoint.clone(),
        cause: format!("invalid Workload API endpoint: {}", error_chain(&e)),
    })?;

    // The source retries failed dials silently; keep the latest dial error so a
    // timeout can say *why* there was no agent.
    let last_dial_error: Arc<Mutex<Option<String>>> = Arc::default();
    let ever_connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let factory = {
        let last = last_dial_error.clone();
        let connected = ever_connected.clone();
        let failures = failures.clone();
        let parsed = parsed.clone();
        Arc::new(move || {
            let last = last.clone();
            let connected = connected.clone();
            let failures = failures.clone();
            let parsed = parsed.clone();
            Box::pin(async move {
                let r = spiffe::WorkloadApiClient::connect(parsed).await;
                match &r {
                    Ok(_) => connected.store(true, std::sync::atomic::Ordering::Relaxed),
                    Err(e) => {
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(error_chain(e));
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                r
            })
                as std::pin::Pin<
                    Box<
                        dyn std::future::Future<
                                Output = Result<
                                    spiffe::WorkloadApiClient,
                                    spiffe::WorkloadApiError,
                                >,
                            > + Send,
                    >,
                >
        })
    };
    let build = spiffe::X509Source::builder()
        .client_factory(factory)
        .reconnect_backoff(SPIRE_RECONNECT_MIN, SPIRE_RECONNECT_MAX)
        .initial_sync_timeout(initial_timeout)
        .build();
    let result = tokio::time::timeout(initial_timeout + Duration::from_secs(1), build).await;
    let fail = |what: String| {
        let dial = last_dial_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !ever_connected.load(std::sync::atomic::Ordering::Relaxed) {
            AuthError::NoAgent {
                endpoint: endpoint.clone(),
                cause: match dial {
                    Some(d) => format!("{d}; gave up after {initial_timeout:?}"),
                    None => what,
                },
            }
        } else {
            AuthError::WorkloadApi {
                endpoint: endpoint.clone(),
                cause: what,
            }
        }
    };
    let x509 = match result {
        Ok(Ok(src)) => src,
        Ok(Err(e)) => return Err(fail(format!("no X.509-SVID: {}", error_chain(&e)))),
        Err(_) => {
            return Err(fail(format!("no X.509-SVID within {initial_timeout:?}")));
        }
    };
    let first = identity_from_source(&x509).map_err(|e| AuthError::WorkloadApi {
        endpoint: endpoint.clone(),
        cause: e,
    })?;
    tracing::info!(id = %first.spiffe_id, %endpoint, "identity from the SPIFFE Workload API");
    let shared = Shared::new(first, failures)?;
    let stop = CancellationToken::new();
    tokio::spawn(spire_refresh(
        x509.clone(),
        shared.clone(),
        stop.clone(),
        endpoint.clone(),
    ));
    Ok(IdentitySource::from_parts(
        shared,
        Backend::Spire {
            endpoint,
            initial_timeout,
            x509,
            jwt: OnceCell::new(),
        },
        stop,
    ))
}

async fn spire_refresh(
    x509: spiffe::X509Source,
    shared: Arc<Shared>,
    stop: CancellationToken,
    endpoint: String,
) {
    let mut updates = x509.updated();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            r = updates.changed() => {
                if let Err(e) = r {
                    tracing::warn!(%endpoint, error = %e, "Workload API source closed; identity will no longer rotate");
                    break;
                }
                match identity_from_source(&x509) {
                    Ok(identity) => {
                        if let Err(e) = shared.publish(identity) {
                            shared.failed();
                            tracing::error!(%endpoint, error = %e, "rotated SVID is unusable; keeping the previous one");
                        }
                    }
                    // E.g. permission withdrawn: keep serving the last SVID until it expires.
                    Err(e) => {
                        shared.failed();
                        tracing::warn!(%endpoint, error = %e, "Workload API update without a usable SVID");
                    }
                }
            }
        }
    }
    // The X509Source stops once its last clone (this one, after the handle's) drops.
}

type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

fn fingerprint(dir: &Path) -> Fingerprint {
    [CERT_FILE, KEY_FILE, BUNDLE_FILE, JWT_BUNDLE_FILE]
        .iter()
        .map(|f| {
            let m = std::fs::metadata(dir.join(f)).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            Some((m.modified().ok()?, m.len(), ino))
        })
        .collect()
}

async fn start_files(dir: PathBuf) -> Result<IdentitySource, AuthError> {
    let fp = fingerprint(&dir);
    let d = dir.clone();
    let identity = tokio::task::spawn_blocking(move || Identity::from_files(&d))
        .await
        .map_err(|e| AuthError::Unsupported(format!("loader task failed: {e}")))??;
    tracing::info!(id = %identity.spiffe_id, dir = %dir.display(), "identity from spiffe-helper files");
    let shared = Shared::new(identity, Arc::default())?;
    let stop = CancellationToken::new();
    tokio::spawn(files_refresh(dir.clone(), fp, shared.clone(), stop.clone()));
    Ok(IdentitySource::from_parts(
        shared,
        Backend::Files { dir },
        stop,
    ))
}

async fn files_refresh(
    dir: PathBuf,
    mut last: Fingerprint,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(FILES_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let d = dir.clone();
        let Ok(fp) = tokio::task::spawn_blocking(move || fingerprint(&d)).await else {
            continue;
        };
        if fp == last {
            continue;
        }
        // Remember the new state even if loading fails: a half-rotated set (key
        // written, certificate not yet) changes again when the writer finishes.
        last = fp;
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || Identity::from_files(&d)).await {
            Ok(Ok(identity)) => {
                if let Err(e) = shared.publish(identity) {
                    shared.failed();
                    tracing::warn!(dir = %dir.display(), error = %e, "reloaded SVID is unusable; keeping the previous one");
                }
            }
            Ok(Err(e)) => {
                shared.failed();
                tracing::warn!(dir = %dir.display(), error = %e, "SVID files changed but do not load; keeping the previous identity");
            }
            Err(e) => {
                shared.failed();
                tracing::warn!(error = %e, "SVID reload task failed");
            }
        }
    }
}

async fn start_dev(
    ca_dir: PathBuf,
    id: SpiffeId,
    ttl: Duration,
) -> Result<IdentitySource, AuthError> {
    let (ca, signer, identity) = {
        let ca_dir = ca_dir.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || -> Result<_, AuthError> {
            let ca = if ca_dir.join(crate::devca::CA_CERT_FILE).exists() {
                DevCa::load(&ca_dir)?
            } else {
                DevCa::init(&ca_dir, id.trust_domain())?
            };
            let signer = JwtSigner::load_or_init(&ca_dir, ca.trust_domain())?;
            let identity = ca.issue(&id, ttl)?;
            Ok((ca, signer, identity))
        })
        .await
        .map_err(|e| AuthError::Unsupported(format!("dev CA task failed: {e}")))??
    };
    tracing::info!(id = %identity.spiffe_id, ca_dir = %ca_dir.display(), "identity from the development CA");
    let shared = Shared::new(identity, Arc::default())?;
    let stop = CancellationToken::new();
    tokio::spawn(dev_refresh(
        Arc::new(ca),
        id,
        ttl,
        shared.clone(),
        stop.clone(),
    ));
    Ok(IdentitySource::from_parts(
        shared,
        Backend::Dev {
            signer: Box::new(signer),
        },
        stop,
    ))
}

async fn dev_refresh(
    ca: Arc<DevCa>,
    id: SpiffeId,
    ttl: Duration,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut wait = (ttl / 2).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        match ca
            .issue(&id, ttl)
            .and_then(|identity| shared.publish(identity))
        {
            Ok(()) => wait = (ttl / 2).max(Duration::from_secs(1)),
            Err(e) => {
                shared.failed();
                tracing::error!(%id, error = %e, "dev CA could not re-issue the SVID; retrying");
                wait = Duration::from_secs(5);
            }
        }
    }
}

//! `slim-devspire`: a SPIFFE Workload API server that stands in for a SPIRE agent
//! in tests and local runs.
//!
//! It speaks the Workload API as specified by SPIFFE (gRPC service
//! `SpiffeWorkloadAPI`, no protobuf package, over a Unix domain socket) well
//! enough that the real `spiffe` crate client — `X509Source`, `JwtSource`,
//! `WorkloadApiClient` — and so SLIM's
//! [`IdentitySource`](slim_auth::IdentitySource) cannot tell it from SPIRE:
//!
//! | RPC | behaviour |
//! |---|---|
//! | `FetchX509SVID` (stream) | one X.509-SVID per configured SPIFFE ID, the first is the default; issued by a [`DevCa`]; the CA as the trust domain's bundle, extra trust domains as `federated_bundles`; a new message on every rotation or bundle change |
//! | `FetchX509Bundles` (stream) | the bundles, keyed `spiffe://<td>` |
//! | `FetchJWTSVID` | an ES256 JWT-SVID for each requested ID (or all) and audience |
//! | `FetchJWTBundles` (stream) | the JWT signing key as a JWKS (`kid` set) for the trust domain |
//! | `ValidateJWTSVID` | validation with [`slim_auth::validate_jwt_svid`] against its own key |
//!
//! As SPIRE does, every request must carry the metadata `workload.spiffe.io: true`
//! and is refused with `InvalidArgument` otherwise. There is no workload
//! attestation: whoever can open the socket gets every configured SVID (the
//! socket is created mode 0600 in a directory the caller chooses).
//!
//! Rotation: [`DevSpireConfig::rotate_every`] re-issues periodically, and
//! [`DevSpire::rotate_now`] pushes fresh SVIDs (new keys, new serials) on every
//! open stream at once. [`DevSpire::set_extra_bundles`] changes the trust bundles.
//!
//! The protobuf messages are written out in [`pb`] (no `protoc`, no build
//! script); `proto/workload.proto` is the reference they follow.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use slim_auth::{DevCa, SpiffeId};
//! use slim_devspire::{DevSpire, DevSpireConfig};
//!
//! let ca = DevCa::generate("example.org")?;
//! let id = SpiffeId::parse("spiffe://example.org/node/a")?;
//! let spire = DevSpire::start(DevSpireConfig::new("/tmp/agent.sock", id), ca).await?;
//! // SPIFFE_ENDPOINT_SOCKET=unix:///tmp/agent.sock for the workload
//! println!("{}", spire.endpoint());
//! spire.rotate_now()?;
//! spire.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod pb;
mod server;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use slim_auth::jwt::{JwtBundles, JwtSigner};
use slim_auth::{AuthError, DevCa, Identity, SpiffeId, TrustBundles};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use state::{JwtSnapshot, State, X509Snapshot};

pub use server::SECURITY_HEADER;

/// Configuration of a [`DevSpire`].
#[derive(Debug, Clone)]
pub struct DevSpireConfig {
    /// Where to listen. A stale socket file there is replaced; the parent
    /// directory is created if needed.
    pub socket_path: PathBuf,
    /// The SPIFFE IDs served, all in the CA's trust domain; the first is the
    /// default SVID.
    pub ids: Vec<SpiffeId>,
    /// Lifetime of each X.509-SVID.
    pub svid_ttl: Duration,
    /// Lifetime of each JWT-SVID.
    pub jwt_ttl: Duration,
    /// Re-issue every SVID this often (`None`: only on [`DevSpire::rotate_now`]).
    pub rotate_every: Option<Duration>,
    /// Keep the JWT signing key in this directory (`jwt.key`, `jwt_bundle.json`)
    /// instead of generating a fresh one per start.
    pub jwt_key_dir: Option<PathBuf>,
}

impl DevSpireConfig {
    /// Serves `id` at `socket_path`: SVIDs for one hour, JWT-SVIDs for five
    /// minutes, no periodic rotation.
    pub fn new(socket_path: impl Into<PathBuf>, id: SpiffeId) -> Self {
        DevSpireConfig {
            socket_path: socket_path.into(),
            ids: vec![id],
            svid_ttl: DevCa::DEFAULT_TTL,
            jwt_ttl: Duration::from_secs(300),
            rotate_every: None,
            jwt_key_dir: None,
        }
    }
}

/// Errors of [`DevSpire`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevSpireError {
    /// The configuration is unusable.
    #[error("invalid devspire configuration: {0}")]
    Config(String),
    /// Issuing or signing failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The socket could not be set up.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A running development Workload API server. Dropping it stops serving (use
/// [`shutdown`](Self::shutdown) to wait for that and remove the socket).
pub struct DevSpire {
    state: Arc<State>,
    socket_path: PathBuf,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    rotator: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DevSpire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSpire")
            .field("socket_path", &self.socket_path)
            .field("ids", &self.state.ids)
            .finish_non_exhaustive()
    }
}

fn bind(path: &Path) -> Result<tokio::net::UnixListener, DevSpireError> {
    let io = |source| DevSpireError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    #[cfg(unix)]
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            // A socket left by a previous run; binding would fail with EADDRINUSE.
            std::fs::remove_file(path).map_err(io)?;
        } else {
            return Err(DevSpireError::Config(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(listener)
}

impl DevSpire {
    /// Issues the first SVIDs, binds the socket and starts serving.
    pub async fn start(cfg: DevSpireConfig, ca: DevCa) -> Result<DevSpire, DevSpireError> {
        if cfg.ids.is_empty() {
            return Err(DevSpireError::Config(
                "at least one SPIFFE ID is required".into(),
            ));
        }
        if let Some(bad) = cfg
            .ids
            .iter()
            .find(|id| !id.is_member_of(ca.trust_domain()))
        {
            return Err(DevSpireError::Config(format!(
                "{bad} is not in the CA's trust domain {}",
                ca.trust_domain()
            )));
        }
        if cfg.rotate_every.is_some_and(|d| d.is_zero()) {
            return Err(DevSpireError::Config(
                "rotate_every must be positive".into(),
            ));
        }
        let signer = match &cfg.jwt_key_dir {
            Some(dir) => JwtSigner::load_or_init(dir, ca.trust_domain())?,
            None => JwtSigner::generate(ca.trust_domain())?,
        };
        let (x509, _) = watch::channel(Arc::new(X509Snapshot {
            trust_domain: ca.trust_domain().to_string(),
            svids: Vec::new(),
            bundles: TrustBundles::new(),
        }));
        let (jwt, _) = watch::channel(Arc::new(JwtSnapshot {
            bundles: signer.bundles(),
        }));
        let stop = CancellationToken::new();
        let state = Arc::new(State {
            ca,
            ids: cfg.ids.clone(),
            svid_ttl: cfg.svid_ttl,
            jwt_ttl: cfg.jwt_ttl,
            signer,
            extra_bundles: Mutex::new(TrustBundles::new()),
            rotate_lock: Mutex::new(()),
            x509,
            jwt,
            stop: stop.clone(),
        });
        state.rotate()?;

        let listener = bind(&cfg.socket_path)?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let svc = server::WorkloadApiServer {
            state: state.clone(),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        let rotator = cfg.rotate_every.map(|every| {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = state.stop.cancelled() => break,
                        () = tokio::time::sleep(every) => {}
                    }
                    if let Err(e) = state.rotate() {
                        tracing::error!(error = %e, "devspire: periodic rotation failed");
                    }
                }
            })
        });
        tracing::info!(
            socket = %cfg.socket_path.display(),
            ids = ?cfg.ids,
            "devspire: serving the SPIFFE Workload API"
        );
        Ok(DevSpire {
            state,
            socket_path: cfg.socket_path,
            server: Some(server),
            rotator,
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The endpoint URI for `SPIFFE_ENDPOINT_SOCKET`: `unix:///path`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket_path.display())
    }

    /// The trust domain served.
    pub fn trust_domain(&self) -> &str {
        self.state.ca.trust_domain()
    }

    /// Re-issues every SVID (new key, new serial) and pushes it on all open
    /// `FetchX509SVID` streams.
    pub fn rotate_now(&self) -> Result<(), DevSpireError> {
        self.state.rotate().map_err(DevSpireError::from)
    }

    /// The SVIDs currently served, default first.
    pub fn current_svids(&self) -> Vec<Identity> {
        self.state.x509.borrow().svids.clone()
    }

    /// Extra trust bundles served besides the CA's own: CAs for the CA's trust
    /// domain are appended to its bundle, other trust domains are served as
    /// federated bundles. Pushed on all open streams.
    pub fn set_extra_bundles(&self, extra: TrustBundles) {
        *self
            .state
            .extra_bundles
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = extra;
        self.state.republish_bundles();
    }

    /// The X.509 bundles currently served.
    pub fn bundles(&self) -> TrustBundles {
        self.state.x509.borrow().bundles.clone()
    }

    /// The JWT bundles currently served (the signing key's JWKS).
    pub fn jwt_bundles(&self) -> JwtBundles {
        self.state.jwt.borrow().bundles.clone()
    }

    /// The JWT-SVID signer (tests: mint tokens out of band).
    pub fn jwt_signer(&self) -> &JwtSigner {
        &self.state.signer
    }

    /// Stops serving: open streams end, the server task finishes (bounded by
    /// 5 s) and the socket file is removed.
    pub async fn shutdown(mut self) {
        self.state.stop.cancel();
        if let Some(rotator) = self.rotator.take() {
            let _ = rotator.await;
        }
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "devspire: server ended with an error")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "devspire: server task failed"),
                Err(_) => {
                    tracing::warn!("devspire: server did not stop within 5 s; aborting it");
                    server.abort();
                }
            }
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

impl Drop for DevSpire {
    fn drop(&mut self) {
        self.state.stop.cancel();
    }
}

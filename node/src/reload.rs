//! Reloads of files the node reads while running.

use std::path::PathBuf;

use tracing::info;

use crate::config::FileConfig;

/// Reloads the policy file when it changes (`notify`, or polling if the OS
/// watcher cannot start) or on SIGHUP. A file that fails to parse leaves the
/// previous policy in force (and says so).
///
/// The watch and the signal handler are set up when this is called (inside a
/// Tokio runtime), so a change made right after is not missed; the returned
/// future runs until the node is gone.
pub fn reload_policy(
    node: std::sync::Weak<slim_actors::NodeHandle>,
    cfg: FileConfig,
    path: PathBuf,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGHUP handler; policy reload only on file change");
            None
        }
    };
    let mut watch = slim_auth::watch::FileWatch::new(
        &path,
        "authorization policy",
        slim_auth::watch::DEFAULT_DEBOUNCE,
    );
    async move {
        loop {
            tokio::select! {
                Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    info!("SIGHUP: reloading the authorization policy")
                }
                _ = watch.changed() => info!(file = %path.display(), "policy file changed; reloading"),
            }
            let Some(node) = node.upgrade() else { return };
            match cfg.load_policy() {
                Ok(p) => node.set_policy(p),
                Err(e) => {
                    tracing::error!(error = %e, "policy reload failed; keeping the previous policy")
                }
            }
        }
    }
}

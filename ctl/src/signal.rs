//! Termination signals: a command closes its connection before it exits,
//! whatever ends it (a leaf module, so every command can use it).

use anyhow::Result;
use slim_client::Client;

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. While it is being polled the
/// signals no longer kill the process, so the command can close its
/// connection first.
pub(crate) async fn terminated() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// `body`, unless a termination signal comes first (an error then).
pub(crate) async fn interruptible<T>(
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = body => r,
        r = terminated() => r.and_then(|()| Err(anyhow::anyhow!("interrupted"))),
    }
}

/// Runs `body` until it ends or a termination signal arrives, then closes
/// `client` either way (bounded). `Ok(None)`: interrupted.
pub(crate) async fn then_close<T>(
    client: &Client,
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<Option<T>> {
    let r = tokio::select! {
        r = body => r.map(Some),
        r = terminated() => r.map(|()| None),
    };
    client.shutdown().await;
    r
}

//! Helpers for Rust values that live on the tokio runtime: drops inside it, deadlines on futures.

use std::future::Future;
use std::time::Duration;

use slim_client::app;

/// Bounds `fut` by `t`, failing with [`app::SlimError::Timeout`].
pub(crate) async fn within<T>(
    t: Option<Duration>,
    what: &str,
    fut: impl Future<Output = Result<T, app::SlimError>>,
) -> Result<T, app::SlimError> {
    match t {
        None => fut.await,
        Some(d) => match tokio::time::timeout(d, fut).await {
            Ok(r) => r,
            Err(_) => Err(app::SlimError::Timeout(format!("{what} within {d:?}"))),
        },
    }
}

/// Holds a Rust handle whose drop may need the tokio runtime (spawning a
/// cleanup task, cancelling a call): Python may release the object on any
/// thread, so the drop enters the runtime first.
pub(crate) struct InRt<T>(Option<T>);

impl<T> InRt<T> {
    pub(crate) fn new(v: T) -> InRt<T> {
        InRt(Some(v))
    }
}

impl<T> std::ops::Deref for InRt<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Some(v) => v,
            // Only `drop` takes the value.
            None => unreachable!("InRt used after drop"),
        }
    }
}

impl<T> Drop for InRt<T> {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            let _g = pyo3_async_runtimes::tokio::get_runtime().enter();
            drop(v);
        }
    }
}

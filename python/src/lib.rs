//! `slim_agents._native`: the PyO3 extension over [`slim_client::app`].
//!
//! Every async method returns a coroutine ([`Call`]) whose Rust future
//! starts when awaited and runs on the tokio runtime of
//! `pyo3_async_runtimes` without the GIL; [`bridge`] turns it into an
//! asyncio future (cancelling the awaiting task drops the Rust future; no
//! result is handed to a finalizing interpreter). Errors travel as
//! [`app::SlimError`](slim_client::app::SlimError) until the result is
//! converted under the GIL ([`Out`](call::Out)), where they become the
//! package's exception classes ([`errors`]).

use pyo3::prelude::*;

mod bridge;
mod call;
mod client;
mod conv;
mod errors;
mod rt;
mod session;
mod values;

pub use call::Call;

/// Logs of the Rust layer to stderr when `$SLIM_LOG` is set (an
/// `EnvFilter` directive such as `info` or `slim_client=debug`).
fn init_logging() {
    if let Ok(filter) = std::env::var("SLIM_LOG")
        && !filter.is_empty()
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The native module; `slim_agents` re-exports what users need.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    // Before finalization: stop handing results to Python (see `bridge`).
    let shutdown = wrap_pyfunction!(bridge::_shutdown, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (shutdown,))?;
    errors::register(m)?;
    m.add_class::<values::Message>()?;
    m.add_class::<values::Member>()?;
    m.add_class::<values::MemberJoined>()?;
    m.add_class::<values::MemberLeft>()?;
    m.add_class::<values::Request>()?;
    m.add_class::<session::Session>()?;
    m.add_class::<client::App>()?;
    m.add_class::<client::AppIterator>()?;
    m.add_class::<client::RequestStream>()?;
    m.add_class::<Call>()?;
    m.add_function(wrap_pyfunction!(client::connect, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

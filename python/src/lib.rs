//! `slim_agents._native`: the PyO3 extension over [`slim_client::app`].
//!
//! Every async method returns a coroutine ([`Call`]) whose Rust future
//! starts when awaited and runs on the tokio runtime of
//! `pyo3_async_runtimes` without the GIL; [`bridge`] turns it into an
//! asyncio future (cancelling the awaiting task drops the Rust future; no
//! result is handed to a finalizing interpreter). Errors travel as
//! [`app::SlimError`] until the result is converted under the GIL ([`Out`]),
//! where they become the package's exception classes ([`errors`]).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::{PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyTuple, PyType};
use slim_client::app;

mod bridge;
mod client;
mod errors;
mod session;
mod values;

/// A result converted under the GIL: `Ok` to its Python value, `Err` to the
/// package's exception.
pub(crate) struct Out<T>(pub Result<T, app::SlimError>);

impl<'py, T: IntoPyObject<'py>> IntoPyObject<'py> for Out<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.0 {
            Ok(v) => v.into_bound_py_any(py),
            Err(e) => Err(errors::to_pyerr(py, &e)),
        }
    }
}

/// The step of an async iterator: an item, the end (`StopAsyncIteration`),
/// or a failure.
pub(crate) enum Step<T> {
    Item(T),
    End,
    Fail(app::SlimError),
}

impl<T> Step<T> {
    /// A `Closed` error ends an iteration cleanly; others are failures.
    pub(crate) fn from_result(r: Result<T, app::SlimError>) -> Step<T> {
        match r {
            Ok(v) => Step::Item(v),
            Err(app::SlimError::Closed(_)) => Step::End,
            Err(e) => Step::Fail(e),
        }
    }
}

impl<'py, T: IntoPyObject<'py>> IntoPyObject<'py> for Step<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Step::Item(v) => v.into_bound_py_any(py),
            Step::End => Err(PyStopAsyncIteration::new_err(())),
            Step::Fail(e) => Err(errors::to_pyerr(py, &e)),
        }
    }
}

/// `bytes` made under the GIL from a [`Bytes`] (no intermediate copy).
pub(crate) struct PyBytesOut(pub Bytes);

impl<'py> IntoPyObject<'py> for PyBytesOut {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Bound<'py, PyBytes>, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// A coroutine over `fut`'s result: the Rust future starts when the
/// coroutine is first awaited (or scheduled as a task).
pub(crate) fn spawn<'py, F, T>(
    py: Python<'py>,
    name: &'static str,
    fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, app::SlimError>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    Call::lazy(py, name, move |py| {
        bridge::start(py, async move { Out(fut.await) })
    })
}

/// Like [`spawn`] for an iterator step.
pub(crate) fn spawn_step<'py, F, T>(
    py: Python<'py>,
    name: &'static str,
    fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Step<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    Call::lazy(py, name, move |py| bridge::start(py, fut))
}

type Starter = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<bridge::Start<'py>> + Send>;

enum CallState {
    /// Not awaited yet: nothing runs.
    New(Starter),
    /// Running: the asyncio future, its `__await__` iterator and (fast
    /// path) how to cancel the Rust future (else: cancel the asyncio future).
    Started {
        fut: Py<PyAny>,
        it: Py<PyAny>,
        abort: Option<bridge::Abort>,
    },
    Done,
}

impl CallState {
    /// Cancels the Rust future of a running call.
    fn cancel(self, py: Python<'_>) -> PyResult<()> {
        match self {
            CallState::Started {
                abort: Some(abort), ..
            } => {
                abort.run(py);
                Ok(())
            }
            CallState::Started { fut, .. } => fut
                .bind(py)
                .call_method0(pyo3::intern!(py, "cancel"))
                .map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// What the awaiting iterates: the result at once, or the running future.
enum Await<'py> {
    Ready(PyResult<Bound<'py, PyAny>>),
    It(Bound<'py, PyAny>),
}

/// The coroutine returned by every async method of the package.
///
/// A real coroutine for asyncio (`asyncio.create_task`, `gather`, `wait_for`
/// accept it): it has `__await__`, `send`, `throw` and `close`. The Rust
/// future starts on the first `send` (when it is awaited), runs on the tokio
/// runtime without the GIL, and is dropped when the awaiting task is
/// cancelled or the coroutine is closed.
#[pyclass(module = "slim_agents")]
pub struct Call {
    name: &'static str,
    state: std::sync::Mutex<CallState>,
}

impl Call {
    fn lazy<'py>(
        py: Python<'py>,
        name: &'static str,
        start: impl for<'a> FnOnce(Python<'a>) -> PyResult<bridge::Start<'a>> + Send + 'static,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(Bound::new(
            py,
            Call {
                name,
                state: std::sync::Mutex::new(CallState::New(Box::new(start))),
            },
        )?
        .into_any())
    }

    /// The `__await__` iterator, starting the future on first use (or its
    /// result, when ready at once).
    fn iter<'py>(&self, py: Python<'py>) -> PyResult<Await<'py>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &*st {
            CallState::Started { it, .. } => return Ok(Await::It(it.bind(py).clone())),
            CallState::Done => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "cannot reuse already awaited coroutine",
                ));
            }
            CallState::New(_) => {}
        }
        let CallState::New(start) = std::mem::replace(&mut *st, CallState::Done) else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("coroutine state"));
        };
        // Unlocked while the future runs its first poll (GIL released).
        drop(st);
        let (fut, abort) = match start(py)? {
            bridge::Start::Ready(r) => return Ok(Await::Ready(r)),
            bridge::Start::Pending(fut, abort) => (fut, abort),
        };
        let it = match fut.call_method0(pyo3::intern!(py, "__await__")) {
            Ok(it) => it,
            Err(e) => {
                let _ = (CallState::Started {
                    fut: fut.unbind(),
                    it: py.None(),
                    abort,
                })
                .cancel(py);
                return Err(e);
            }
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st = CallState::Started {
            fut: fut.unbind(),
            it: it.clone().unbind(),
            abort,
        };
        Ok(Await::It(it))
    }

    /// After `send`/`throw`: an exception (including `StopIteration`, the
    /// result) ends the coroutine; a future still running is cancelled.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        r: PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if r.is_err() {
            let st = std::mem::replace(
                &mut *self.state.lock().unwrap_or_else(|e| e.into_inner()),
                CallState::Done,
            );
            let _ = st.cancel(py);
        }
        r
    }
}

impl Drop for Call {
    /// A coroutine dropped while its future runs (started, then abandoned
    /// without being closed) cancels the Rust future.
    fn drop(&mut self) {
        let st = std::mem::replace(
            self.state.get_mut().unwrap_or_else(|e| e.into_inner()),
            CallState::Done,
        );
        if let CallState::Started { .. } = st {
            Python::attach(|py| {
                let _ = st.cancel(py);
            });
        }
    }
}

/// `s` quoted like Python's `repr(str)` (for `__repr__`s).
pub(crate) fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[pymethods]
impl Call {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.send(py, py.None().into_bound(py))
    }

    /// Coroutine protocol: resumes the awaiting.
    fn send<'py>(&self, py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self.iter(py)? {
            // Finished without suspending: the result is StopIteration's.
            Await::Ready(r) => Err(pyo3::exceptions::PyStopIteration::new_err((r?.unbind(),))),
            Await::It(it) => self.finish(py, it.call_method1(pyo3::intern!(py, "send"), (value,))),
        }
    }

    /// Coroutine protocol: raises an exception at the await point.
    #[pyo3(signature = (*args))]
    fn throw<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let started = matches!(
            &*self.state.lock().unwrap_or_else(|e| e.into_inner()),
            CallState::Started { .. }
        );
        if !started {
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = CallState::Done;
            let first = args.get_item(0)?;
            let exc = if first.is_instance_of::<PyType>() {
                match args.get_item(1).ok().filter(|v| !v.is_none()) {
                    Some(v) if v.is_instance(&first)? => v,
                    Some(v) => first.call1((v,))?,
                    None => first.call0()?,
                }
            } else {
                first
            };
            return Err(PyErr::from_value(exc));
        }
        match self.iter(py)? {
            Await::Ready(r) => Err(pyo3::exceptions::PyStopIteration::new_err((r?.unbind(),))),
            Await::It(it) => self.finish(py, it.call_method1(pyo3::intern!(py, "throw"), args)),
        }
    }

    /// Coroutine protocol: abandons the call (cancels the Rust future).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let st = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            CallState::Done,
        );
        st.cancel(py)
    }

    fn __repr__(&self) -> String {
        let st = match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            CallState::New(_) => "not started",
            CallState::Started { .. } => "running",
            CallState::Done => "done",
        };
        format!("<coroutine slim_agents.{} ({st})>", self.name)
    }
}

/// A payload argument: `bytes`, `bytearray` or anything with the buffer
/// protocol over bytes (`memoryview`, ...); `str` and others are a `TypeError`.
pub(crate) fn payload(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Bytes::from(b.to_vec()));
    }
    if !obj.is_instance_of::<pyo3::types::PyString>()
        && let Ok(buf) = pyo3::buffer::PyBuffer::<u8>::get(obj)
    {
        return Ok(Bytes::from(buf.to_vec(obj.py())?));
    }
    Err(PyTypeError::new_err(format!(
        "expected bytes, bytearray or memoryview, got {}",
        obj.get_type().name()?
    )))
}

/// A `timeout=` argument in seconds: `None` (or infinity) waits forever.
pub(crate) fn timeout_arg(t: Option<f64>) -> PyResult<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(s) if s == f64::INFINITY => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s).map(Some).map_err(|_| {
            PyValueError::new_err(format!(
                "timeout must be a non-negative number of seconds or None, got {s}"
            ))
        }),
    }
}

/// A required duration argument (`timeout=5.0`).
pub(crate) fn duration_arg(what: &str, s: f64) -> PyResult<Duration> {
    if s == f64::INFINITY {
        // About a century: "no deadline" without overflowing Instant.
        return Ok(Duration::from_secs(100 * 365 * 24 * 3600));
    }
    Duration::try_from_secs_f64(s).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, got {s}"
        ))
    })
}

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

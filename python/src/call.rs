//! The coroutine every async method returns ([`Call`]) and the results it converts under the GIL.

use std::future::Future;

use bytes::Bytes;
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple, PyType};
use slim_client::app;

use crate::{bridge, errors};

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
    state: parking_lot::Mutex<CallState>,
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
                state: parking_lot::Mutex::new(CallState::New(Box::new(start))),
            },
        )?
        .into_any())
    }

    /// The `__await__` iterator, starting the future on first use (or its
    /// result, when ready at once).
    fn iter<'py>(&self, py: Python<'py>) -> PyResult<Await<'py>> {
        let mut st = self.state.lock();
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
        let mut st = self.state.lock();
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
            let st = std::mem::replace(&mut *self.state.lock(), CallState::Done);
            let _ = st.cancel(py);
        }
        r
    }
}

impl Drop for Call {
    /// A coroutine dropped while its future runs (started, then abandoned
    /// without being closed) cancels the Rust future.
    fn drop(&mut self) {
        let st = std::mem::replace(self.state.get_mut(), CallState::Done);
        if let CallState::Started { .. } = st {
            Python::attach(|py| {
                let _ = st.cancel(py);
            });
        }
    }
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
        let started = matches!(&*self.state.lock(), CallState::Started { .. });
        if !started {
            *self.state.lock() = CallState::Done;
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
        let st = std::mem::replace(&mut *self.state.lock(), CallState::Done);
        st.cancel(py)
    }

    fn __repr__(&self) -> String {
        let st = match &*self.state.lock() {
            CallState::New(_) => "not started",
            CallState::Started { .. } => "running",
            CallState::Done => "done",
        };
        format!("<coroutine slim_agents.{} ({st})>", self.name)
    }
}

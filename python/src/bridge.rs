//! Rust futures as asyncio futures, safe at interpreter exit.
//!
//! Like `pyo3_async_runtimes::tokio::future_into_py` (same runtime, same
//! cancellation: cancelling the asyncio future drops the Rust future), with
//! one difference that matters: a result is handed to Python only while the
//! interpreter is not finalizing. With the stock helper, a worker thread
//! delivering a result with `call_soon_threadsafe` releases the GIL around
//! the self-pipe write; if the main thread finishes `asyncio.run` and starts
//! finalizing meanwhile, CPython ends that thread with `pthread_exit`, whose
//! forced unwind through Rust frames aborts the process (exit status -6).
//! Here every delivery is counted, and an `atexit` hook (which runs before
//! finalization) stops new deliveries and waits for the ones in flight.
//!
//! The fast path ([`start`]) avoids that delivery (and its thread hops)
//! altogether:
//! * the future is polled once on the calling thread (GIL released, runtime
//!   entered); a result ready at once (`publish` into a queue with room) is
//!   returned without any thread hop or event-loop round trip;
//! * otherwise it runs as one tokio task whose result is pushed, as Rust
//!   data, onto a queue of the running loop's [`Hub`], which is woken through
//!   a socket registered with `loop.add_reader`: the runtime threads never
//!   take the GIL nor call into Python (nothing to gate at exit), results
//!   ready together cost one wakeup, and they are converted to Python values
//!   on the loop's thread.
//!
//! Loops without `add_reader` (or non-Unix platforms) use [`future_into_py`].

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::sync::oneshot;

/// `(finalizing, deliveries in flight)`.
static GATE: Mutex<(bool, usize)> = Mutex::new((false, 0));
static GATE_CV: Condvar = Condvar::new();

/// `_deliver(fut, ok, value)`: sets the result unless the future is done
/// (cancelled meanwhile).
static DELIVER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn deliver_fn(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    DELIVER
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            let code = c"def _deliver(fut, ok, value):\n    if not fut.done():\n        if ok:\n            fut.set_result(value)\n        else:\n            fut.set_exception(value)\n";
            let m = PyModule::from_code(py, code, c"slim_agents/_bridge.py", c"_bridge")?;
            Ok(m.getattr("_deliver")?.unbind())
        })
        .map(|f| f.bind(py))
}

/// Enters the gate; `false` once the interpreter is shutting down.
fn enter() -> bool {
    let mut g = GATE.lock();
    if g.0 {
        return false;
    }
    g.1 += 1;
    true
}

fn leave() {
    let mut g = GATE.lock();
    g.1 = g.1.saturating_sub(1);
    if g.1 == 0 {
        GATE_CV.notify_all();
    }
}

/// Registered with `atexit`: no more deliveries; waits (GIL released, at
/// most 2 s) for those in flight.
#[pyfunction]
pub fn _shutdown(py: Python<'_>) {
    py.detach(|| {
        let mut g = GATE.lock();
        g.0 = true;
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while g.1 > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            GATE_CV.wait_for(&mut g, left);
        }
    });
}

/// Done-callback of the asyncio future: a cancellation cancels the Rust side.
#[pyclass]
struct CancelRust {
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

#[pymethods]
impl CancelRust {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        if fut.call_method0("cancelled")?.is_truthy()?
            && let Some(tx) = self.tx.lock().take()
        {
            let _ = tx.send(());
        }
        Ok(())
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    slim_framed::task::panic_message(p)
        .unwrap_or("unknown panic")
        .to_owned()
}

/// Runs `fut` on the runtime; returns the asyncio future of its result
/// (`T` is converted under the GIL; its conversion error is the exception).
pub fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py
        .import("asyncio")?
        .call_method0("get_running_loop")?
        .unbind();
    let py_fut = event_loop.bind(py).call_method0("create_future")?;
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    py_fut.call_method1(
        "add_done_callback",
        (CancelRust {
            tx: Mutex::new(Some(cancel_tx)),
        },),
    )?;
    let target = py_fut.clone().unbind();
    let rt = pyo3_async_runtimes::tokio::get_runtime();
    rt.spawn(async move {
        // The inner task isolates a panic of `fut` (reported as an exception).
        let work = tokio::spawn(async move {
            tokio::select! {
                biased;
                v = fut => Some(v),
                _ = cancel_rx => None,
            }
        });
        let outcome = match work.await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => return, // cancelled from Python: nothing to deliver
            Err(e) if e.is_panic() => Err(panic_text(&*e.into_panic())),
            Err(_) => return,
        };
        // Delivering takes the GIL: not on a runtime worker.
        tokio::task::spawn_blocking(move || {
            if !enter() {
                return;
            }
            Python::attach(|py| {
                let f = target.bind(py);
                if f.call_method0("done")
                    .and_then(|d| d.is_truthy())
                    .unwrap_or(true)
                {
                    return;
                }
                let (ok, value): (bool, Bound<'_, PyAny>) = match outcome {
                    Ok(v) => match v.into_pyobject(py) {
                        Ok(obj) => (true, pyo3::BoundObject::into_bound(obj).into_any()),
                        Err(e) => (false, e.into().into_value(py).into_bound(py).into_any()),
                    },
                    Err(msg) => (
                        false,
                        pyo3::exceptions::PyRuntimeError::new_err(format!(
                            "internal error in slim_agents (a Rust panic): {msg}"
                        ))
                        .into_value(py)
                        .into_bound(py)
                        .into_any(),
                    ),
                };
                let r = deliver_fn(py).and_then(|d| {
                    event_loop
                        .bind(py)
                        .call_method1("call_soon_threadsafe", (d, f, ok, value))
                        .map(|_| ())
                });
                // A closed loop (the program moved on): nobody is waiting.
                drop(r);
            });
            leave();
        });
    });
    Ok(py_fut)
}

/// Polls the inner future with its panics caught (as their message).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(panic_text(&*p))),
        }
    }
}

/// A result as a Python value or exception (a panic is a `RuntimeError`).
fn convert<'py, T>(py: Python<'py>, r: Result<T, String>) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a>,
{
    match r {
        Ok(v) => match v.into_pyobject(py) {
            Ok(obj) => Ok(pyo3::BoundObject::into_bound(obj).into_any()),
            Err(e) => Err(e.into()),
        },
        Err(msg) => Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "internal error in slim_agents (a Rust panic): {msg}"
        ))),
    }
}

/// What [`start`] made of a future.
pub enum Start<'py> {
    /// Finished on the first poll: its value or exception.
    Ready(PyResult<Bound<'py, PyAny>>),
    /// Running: the asyncio future of its result, and (fast path) how to
    /// cancel it (else cancelling the asyncio future cancels it).
    Pending(Bound<'py, PyAny>, Option<Abort>),
}

/// Cancels a running call of the fast path: drops the Rust future and
/// forgets its asyncio future.
pub struct Abort {
    task: tokio::task::AbortHandle,
    hub: Py<Hub>,
    id: u64,
}

impl Abort {
    pub fn run(self, py: Python<'_>) {
        self.task.abort();
        let fut = lock(&self.hub.bind(py).get().pending).remove(&self.id);
        drop(fut);
    }
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

type Convert = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send>;

/// The side of a [`Hub`] the runtime threads see: no Python objects.
struct Shared {
    ready: Mutex<Vec<(u64, Convert)>>,
    #[cfg(unix)]
    rx: std::os::unix::net::UnixStream,
    #[cfg(unix)]
    tx: std::os::unix::net::UnixStream,
}

impl Shared {
    /// Queues a result; the first of a batch wakes the loop.
    fn push(&self, id: u64, conv: Convert) {
        let first = {
            let mut q = lock(&self.ready);
            q.push((id, conv));
            q.len() == 1
        };
        #[cfg(unix)]
        if first {
            use std::io::Write;
            // Full (WouldBlock): a wakeup is already pending.
            let _ = (&self.tx).write(&[1]);
        }
    }
}

/// The results queue of one event loop; its reader callback (`__call__`)
/// hands the queued results to their asyncio futures.
#[pyclass(frozen, module = "slim_agents")]
pub struct Hub {
    shared: Arc<Shared>,
    /// The asyncio futures of running calls (touched under the GIL only).
    pending: Mutex<HashMap<u64, Py<PyAny>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// A weak reference to the loop.
    event_loop: Py<PyAny>,
}

#[pymethods]
impl Hub {
    fn __call__(&self, py: Python<'_>) {
        #[cfg(unix)]
        {
            use std::io::Read;
            let mut buf = [0u8; 64];
            while let Ok(n) = (&self.shared.rx).read(&mut buf) {
                if n < buf.len() {
                    break;
                }
            }
        }
        let items = std::mem::take(&mut *lock(&self.shared.ready));
        for (id, conv) in items {
            let fut = lock(&self.pending).remove(&id);
            let Some(fut) = fut else { continue }; // cancelled
            let fut = fut.bind(py);
            if fut
                .call_method0(pyo3::intern!(py, "done"))
                .and_then(|d| d.is_truthy())
                .unwrap_or(true)
            {
                continue;
            }
            let r = match conv(py) {
                Ok(v) => fut.call_method1(pyo3::intern!(py, "set_result"), (v,)),
                Err(e) => fut.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),)),
            };
            drop(r);
        }
    }
}

/// `(get_running_loop, WeakKeyDictionary loop -> Hub or None)`.
static LOOPS: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
/// The hub last used (most programs have one loop).
static LAST: PyOnceLock<Mutex<Option<Py<Hub>>>> = PyOnceLock::new();

/// The running loop and its hub (`None`: the loop cannot have one).
fn hub<'py>(py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, Hub>>)> {
    let (get_loop, hubs) = LOOPS.get_or_try_init(py, || -> PyResult<_> {
        let asyncio = py.import("asyncio")?;
        let weakref = py.import("weakref")?;
        Ok((
            asyncio.getattr("get_running_loop")?.unbind(),
            weakref.call_method0("WeakKeyDictionary")?.unbind(),
        ))
    })?;
    let event_loop = get_loop.bind(py).call0()?;
    let last = LAST.get_or_init(py, || Mutex::new(None));
    if let Some(h) = lock(last).as_ref().map(|h| h.bind(py).clone())
        && h.get().event_loop.bind(py).call0()?.is(&event_loop)
    {
        return Ok((event_loop, Some(h)));
    }
    let hubs = hubs.bind(py);
    let found = hubs.call_method1(pyo3::intern!(py, "get"), (&event_loop, false))?;
    let h = if found.is_none() {
        None
    } else if let Ok(h) = found.cast::<Hub>() {
        Some(h.clone())
    } else {
        let h = new_hub(py, &event_loop).ok();
        match &h {
            Some(h) => hubs.set_item(&event_loop, h)?,
            None => hubs.set_item(&event_loop, py.None())?,
        }
        h
    };
    if let Some(h) = &h {
        *lock(last) = Some(h.clone().unbind());
    }
    Ok((event_loop, h))
}

#[cfg(unix)]
fn new_hub<'py>(py: Python<'py>, event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, Hub>> {
    use std::os::fd::AsRawFd;
    let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
    rx.set_nonblocking(true)?;
    tx.set_nonblocking(true)?;
    let fd = rx.as_raw_fd();
    let weak = py.import("weakref")?.call_method1("ref", (event_loop,))?;
    let h = Bound::new(
        py,
        Hub {
            shared: Arc::new(Shared {
                ready: Mutex::new(Vec::new()),
                rx,
                tx,
            }),
            pending: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            event_loop: weak.unbind(),
        },
    )?;
    event_loop.call_method1("add_reader", (fd, &h))?;
    Ok(h)
}

#[cfg(not(unix))]
fn new_hub<'py>(_py: Python<'py>, _event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, Hub>> {
    Err(pyo3::exceptions::PyNotImplementedError::new_err("no hub"))
}

/// Starts `fut`: polls it once here, then (if not ready) runs it on the
/// runtime (see the module documentation).
pub fn start<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Start<'py>>
where
    F: Future<Output = T> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let rt = pyo3_async_runtimes::tokio::get_runtime();
    let mut fut = CatchUnwind(Box::pin(fut));
    let first = py.detach(|| {
        let _rt = rt.enter();
        Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop()))
    });
    if let Poll::Ready(r) = first {
        return Ok(Start::Ready(convert(py, r)));
    }
    let (event_loop, hub) = hub(py)?;
    let Some(hub) = hub else {
        let f = future_into_py(py, async move { Caught(fut.await) })?;
        return Ok(Start::Pending(f, None));
    };
    let py_fut = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    let h = hub.get();
    let id = h.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock(&h.pending).insert(id, py_fut.clone().unbind());
    let shared = h.shared.clone();
    let task = rt.spawn(async move {
        let r = fut.await;
        shared.push(id, Box::new(move |py| convert(py, r)));
    });
    Ok(Start::Pending(
        py_fut,
        Some(Abort {
            task: task.abort_handle(),
            hub: hub.unbind(),
            id,
        }),
    ))
}

/// A result or a caught panic, converted like [`convert`] (for
/// [`future_into_py`]).
struct Caught<T>(Result<T, String>);

impl<'py, T> IntoPyObject<'py> for Caught<T>
where
    T: for<'a> IntoPyObject<'a>,
{
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert(py, self.0)
    }
}

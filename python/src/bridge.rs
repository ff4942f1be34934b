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

use std::future::Future;
use std::sync::{Condvar, Mutex};
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
    let mut g = GATE.lock().unwrap_or_else(|e| e.into_inner());
    if g.0 {
        return false;
    }
    g.1 += 1;
    true
}

fn leave() {
    let mut g = GATE.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut g = GATE.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = true;
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while g.1 > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            g = GATE_CV
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
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
            && let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            let _ = tx.send(());
        }
        Ok(())
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
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

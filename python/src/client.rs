//! `App`, its async iterators, `RequestStream` and `connect`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use slim_client::app;
use slim_wire::Mode;

use crate::call::{PyBytesOut, Step, spawn, spawn_step};
use crate::conv::{duration_arg, payload, py_str, timeout_arg};
use crate::rt::{InRt, within};
use crate::session::SessionOut;
use crate::values::{MsgOut, RequestOut};

/// Used when `SharedSecret(trust_domain=None)`: the trust domain then comes
/// from each bundle certificate's `spiffe://` URI SAN (dev CAs carry one);
/// this only names certificates without one.
const UNNAMED_TRUST_DOMAIN: &str = "unnamed.invalid";

fn identity_config(
    identity: &str,
    socket: Option<String>,
    dir: Option<String>,
    audience: Option<String>,
    secret: Option<String>,
    bundle: Option<String>,
    trust_domain: Option<String>,
) -> PyResult<app::IdentityConfig> {
    let need = |v: Option<String>, what: &str| {
        v.ok_or_else(|| PyValueError::new_err(format!("identity {identity:?} needs {what}")))
    };
    Ok(match identity {
        "workload_api" => app::IdentityConfig::WorkloadApi { socket },
        "files" => app::IdentityConfig::Files {
            dir: PathBuf::from(need(dir, "dir")?),
        },
        "jwt" => app::IdentityConfig::Jwt {
            audience: need(audience, "audience")?,
            socket,
        },
        "shared_secret" => app::IdentityConfig::SharedSecret {
            secret: need(secret, "secret")?,
            bundle: PathBuf::from(need(bundle, "bundle")?),
            trust_domain: trust_domain.unwrap_or_else(|| UNNAMED_TRUST_DOMAIN.into()),
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown identity kind {other:?} (workload_api, files, jwt, shared_secret)"
            )));
        }
    })
}

/// Connects to a node (low level; use `slim_agents.connect`).
#[pyfunction]
#[pyo3(signature = (url, name, *, identity="workload_api", socket=None, dir=None, audience=None,
                    secret=None, bundle=None, trust_domain=None, timeout=10.0, request_timeout=10.0,
                    on_disconnect="buffer", max_udp_payload=slim_client::DEFAULT_MAX_UDP_PAYLOAD))]
#[allow(clippy::too_many_arguments)]
pub fn connect<'py>(
    py: Python<'py>,
    url: String,
    name: String,
    identity: &str,
    socket: Option<String>,
    dir: Option<String>,
    audience: Option<String>,
    secret: Option<String>,
    bundle: Option<String>,
    trust_domain: Option<String>,
    timeout: f64,
    request_timeout: f64,
    on_disconnect: &str,
    max_udp_payload: u16,
) -> PyResult<Bound<'py, PyAny>> {
    let mut cfg = app::AppConfig::new(url, name).identity(identity_config(
        identity,
        socket,
        dir,
        audience,
        secret,
        bundle,
        trust_domain,
    )?);
    cfg.connect_timeout = duration_arg("timeout", timeout)?;
    cfg.request_timeout = duration_arg("request_timeout", request_timeout)?;
    cfg.max_udp_payload = max_udp_payload;
    cfg.on_disconnect = match on_disconnect {
        "buffer" => slim_client::DisconnectPolicy::default(),
        "fail" => slim_client::DisconnectPolicy::Fail,
        other => {
            return Err(PyValueError::new_err(format!(
                "on_disconnect must be \"buffer\" or \"fail\", got {other:?}"
            )));
        }
    };
    // `timeout` bounds resolving, QUIC, TLS and the hello; obtaining the
    // identity has its own bound in the SDK (an `IdentityError` says why).
    spawn(py, "connect", async move {
        app::App::connect(cfg).await.map(|a| App {
            inner: InRt::new(a),
        })
    })
}

fn parse_mode(mode: &str) -> PyResult<Mode> {
    match mode {
        "multicast" => Ok(Mode::Multicast),
        "anycast" => Ok(Mode::Anycast),
        "unicast" => Ok(Mode::Unicast),
        other => Err(PyValueError::new_err(format!(
            "mode must be \"multicast\", \"anycast\" or \"unicast\", got {other:?}"
        ))),
    }
}

/// A connected agent (from `await slim_agents.connect(...)`).
///
/// Raw pub/sub, point-to-point sessions, group channels and RPC all start
/// here. Closing it (`await app.close()`, or leaving `async with`) ends
/// everything; afterwards every call raises `ClosedError`.
///
/// ```python
/// async with await slim.connect("slim://127.0.0.1:4500", "acme/eu/monitor") as app:
///     await app.subscribe("acme/alerts/all")
///     async for msg in app.messages():
///         print(msg.source, msg.payload)
/// ```
#[pyclass(frozen, module = "slim_agents")]
pub struct App {
    inner: InRt<app::App>,
}

impl App {
    fn handle(&self) -> app::App {
        (*self.inner).clone()
    }
}

#[pymethods]
impl App {
    /// This agent's full name (`org/namespace/service/instance`).
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// The SPIFFE ID the node authenticated this agent as (`None` with a shared secret).
    #[getter]
    fn spiffe_id(&self) -> Option<String> {
        self.inner.spiffe_id()
    }

    /// Declares interest in `name`; returns once the node acknowledged it.
    /// Raises `PermissionDenied` if the node's policy refuses it.
    ///
    /// ```python
    /// await app.subscribe("acme/alerts/all")
    /// ```
    fn subscribe<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let a = self.handle();
        spawn(py, "subscribe", async move { a.subscribe(&name).await })
    }

    /// Withdraws a subscription.
    fn unsubscribe<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let a = self.handle();
        spawn(py, "unsubscribe", async move { a.unsubscribe(&name).await })
    }

    /// Publishes `data` to `name` and returns its message id once queued.
    /// `mode`: `"multicast"` (every subscriber), `"anycast"` (one of them) or
    /// `"unicast"` (`name` is a full name with an instance id). A refusal by
    /// the node arrives asynchronously: `flush()` raises it.
    ///
    /// ```python
    /// await app.publish("acme/alerts/all", b'{"level":"high"}')
    /// await app.flush()
    /// ```
    #[pyo3(signature = (name, data, *, mode="multicast"))]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        name: String,
        data: &Bound<'py, PyAny>,
        mode: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mode = parse_mode(mode)?;
        let data = payload(data)?;
        let a = self.handle();
        spawn(
            py,
            "publish",
            async move { a.publish(&name, mode, &data).await },
        )
    }

    /// A round trip to the node; raises the first refusal (`PermissionDenied`,
    /// `NoRouteError`) the node reported for raw publishes since the last flush.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let a = self.handle();
        spawn(py, "flush", async move { a.flush().await })
    }

    /// The next raw message (`TimeoutError` after `timeout` seconds).
    ///
    /// ```python
    /// msg = await app.receive(timeout=5)
    /// ```
    #[pyo3(signature = (timeout=None))]
    fn receive<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_arg(timeout)?;
        let a = self.handle();
        spawn(py, "receive", async move {
            within(t, "no message", a.receive()).await.map(MsgOut)
        })
    }

    /// Raw messages as an async iterator (ends when the app is closed).
    ///
    /// ```python
    /// async for msg in app.messages():
    ///     ...
    /// ```
    fn messages(&self) -> AppIterator {
        AppIterator {
            app: InRt::new(self.handle()),
            what: What::Messages,
        }
    }

    /// Opens a point-to-point session to `service` (anycast: whichever
    /// instance answers is the peer). `timeout` bounds the opening.
    ///
    /// ```python
    /// s = await app.open_session("acme/tools/echo", mls=True, timeout=5)
    /// ```
    #[pyo3(signature = (service, *, reliable=true, mls=false, timeout=None))]
    fn open_session<'py>(
        &self,
        py: Python<'py>,
        service: String,
        reliable: bool,
        mls: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_arg(timeout)?;
        let opts = app::SessionOptions {
            reliable,
            mls,
            timeout: t,
        };
        let a = self.handle();
        spawn(py, "open_session", async move {
            // The SDK spreads `timeout` over its open attempts; bound the
            // whole too (with a margin so its own, more precise error wins).
            let bound = t.map(|d| d + Duration::from_millis(500));
            within(
                bound,
                "the session was not opened",
                a.open_session(&service, opts),
            )
            .await
            .map(SessionOut)
        })
    }

    /// The next inbound session: a p2p session opened to this app's service,
    /// or a group channel it was invited into (accepted automatically).
    #[pyo3(signature = (timeout=None))]
    fn accept<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_arg(timeout)?;
        let a = self.handle();
        spawn(py, "accept", async move {
            within(t, "no session", a.accept()).await.map(SessionOut)
        })
    }

    /// Inbound sessions as an async iterator (see `accept`).
    ///
    /// ```python
    /// async for s in app.sessions():
    ///     asyncio.create_task(handle(s))
    /// ```
    fn sessions(&self) -> AppIterator {
        AppIterator {
            app: InRt::new(self.handle()),
            what: What::Sessions,
        }
    }

    /// Creates the group channel `name` with this app as its moderator.
    /// `admission`: SPIFFE-ID patterns (`*` one segment, `**` the rest)
    /// allowed to join by request; empty: invitation only.
    ///
    /// ```python
    /// ch = await app.create_channel("acme/ops/incident", admission=["spiffe://acme.org/agents/**"])
    /// ```
    #[pyo3(signature = (name, *, mls=true, admission=None))]
    fn create_channel<'py>(
        &self,
        py: Python<'py>,
        name: String,
        mls: bool,
        admission: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = app::CreateOptions {
            mls,
            admission: admission.unwrap_or_default(),
        };
        let a = self.handle();
        spawn(py, "create_channel", async move {
            a.create_channel(&name, opts).await.map(SessionOut)
        })
    }

    /// Joins the channel `name` by request, retrying until admitted, refused
    /// (`JoinRefused`) or `timeout` seconds passed (`TimeoutError`).
    ///
    /// ```python
    /// ch = await app.join_channel("acme/ops/incident", timeout=60)
    /// ```
    #[pyo3(signature = (name, *, mls=true, timeout=60.0))]
    fn join_channel<'py>(
        &self,
        py: Python<'py>,
        name: String,
        mls: bool,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = app::JoinOptions {
            mls,
            timeout: duration_arg("timeout", timeout)?,
        };
        let a = self.handle();
        spawn(py, "join_channel", async move {
            a.join_channel(&name, opts).await.map(SessionOut)
        })
    }

    /// A unary call to `service`: returns the response bytes, or raises
    /// `TimeoutError` (deadline), `NoRouteError`, `RemoteError`.
    ///
    /// ```python
    /// answer = await app.request("acme/tools/echo", b"ping", timeout=2)
    /// ```
    #[pyo3(signature = (service, data, *, timeout=5.0))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        service: String,
        data: &Bound<'py, PyAny>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(data)?;
        let t = duration_arg("timeout", timeout)?;
        let a = self.handle();
        spawn(py, "request", async move {
            a.request(&service, &data, t).await.map(PyBytesOut)
        })
    }

    /// A streaming call: an async iterator of response `bytes` (ends with the
    /// stream; the deadline raises `TimeoutError`). The call starts at the
    /// first iteration; cancelling the iterating task, `aclose()` or leaving
    /// `async with` cancels it (the responder sees `request.cancelled`).
    ///
    /// ```python
    /// async for chunk in app.request_stream("acme/tools/tail", b"log", timeout=30):
    ///     print(chunk)
    /// ```
    #[pyo3(signature = (service, data, *, timeout=30.0))]
    fn request_stream(
        &self,
        service: String,
        data: &Bound<'_, PyAny>,
        timeout: f64,
    ) -> PyResult<RequestStream> {
        let data = payload(data)?;
        let t = duration_arg("timeout", timeout)?;
        Ok(RequestStream {
            state: Arc::new(tokio::sync::Mutex::new(StreamState::NotStarted {
                app: self.handle(),
                service,
                data,
                timeout: t,
            })),
        })
    }

    /// The next RPC to this app's service (the first call starts serving).
    #[pyo3(signature = (timeout=None))]
    fn next_request<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_arg(timeout)?;
        let a = self.handle();
        spawn(py, "next_request", async move {
            // Serve before the timeout starts, so a timed-out poll still serves.
            a.serve().await?;
            within(t, "no request", a.next_request())
                .await
                .map(RequestOut)
        })
    }

    /// Inbound RPCs as an async iterator of `Request`.
    ///
    /// ```python
    /// async for req in app.requests():
    ///     await req.reply(b"ok")
    /// ```
    fn requests(&self) -> AppIterator {
        AppIterator {
            app: InRt::new(self.handle()),
            what: What::Requests,
        }
    }

    /// Starts serving RPCs now, without waiting for a request (calls before
    /// that fail fast with `NoRouteError`).
    fn serve<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let a = self.handle();
        spawn(py, "serve", async move { a.serve().await })
    }

    /// Closes the connection after sending what is queued. Idempotent.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let a = self.handle();
        spawn(py, "close", async move {
            a.close().await;
            Ok(())
        })
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        spawn(
            py,
            "__aenter__",
            async move { Ok::<_, app::SlimError>(slf) },
        )
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc_type: Option<Bound<'py, PyAny>>,
        _exc: Option<Bound<'py, PyAny>>,
        _tb: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let a = self.handle();
        spawn(py, "__aexit__", async move {
            a.close().await;
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<App name={} spiffe_id={}>",
            py_str(self.inner.name().as_str()),
            match self.inner.spiffe_id() {
                Some(s) => py_str(&s),
                None => "None".into(),
            }
        )
    }
}

#[derive(Clone, Copy)]
enum What {
    Messages,
    Sessions,
    Requests,
}

/// An async iterator over an app's raw messages, inbound sessions or RPCs
/// (from `app.messages()`, `app.sessions()`, `app.requests()`); ends when
/// the app is closed.
#[pyclass(frozen, module = "slim_agents")]
pub struct AppIterator {
    app: InRt<app::App>,
    what: What,
}

/// One item of an [`AppIterator`].
enum AnyOut {
    Msg(MsgOut),
    Session(SessionOut),
    Request(RequestOut),
}

impl<'py> IntoPyObject<'py> for AnyOut {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            AnyOut::Msg(m) => m.into_pyobject(py)?.into_any(),
            AnyOut::Session(s) => s.into_pyobject(py)?.into_any(),
            AnyOut::Request(r) => r.into_pyobject(py)?.into_any(),
        })
    }
}

#[pymethods]
impl AppIterator {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let a = (*self.app).clone();
        let what = self.what;
        spawn_step(py, "__anext__", async move {
            Step::from_result(match what {
                What::Messages => a.receive().await.map(|m| AnyOut::Msg(MsgOut(m))),
                What::Sessions => a.accept().await.map(|s| AnyOut::Session(SessionOut(s))),
                What::Requests => a
                    .next_request()
                    .await
                    .map(|r| AnyOut::Request(RequestOut(r))),
            })
        })
    }

    fn __repr__(&self) -> String {
        let w = match self.what {
            What::Messages => "messages",
            What::Sessions => "sessions",
            What::Requests => "requests",
        };
        format!("<AppIterator {w} of {}>", self.app.name())
    }
}

enum StreamState {
    NotStarted {
        app: app::App,
        service: String,
        data: Bytes,
        timeout: Duration,
    },
    Open(app::RpcStream),
    Done,
}

/// Ends the stream if the `__anext__` holding it is dropped before it
/// finished (the awaiting task was cancelled): dropping the Rust stream
/// cancels the call.
struct CancelOnDrop {
    state: Option<Arc<tokio::sync::Mutex<StreamState>>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(state) = self.state.take()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            h.spawn(async move {
                *state.lock().await = StreamState::Done;
            });
        }
    }
}

/// The responses of a streaming call (from `app.request_stream(...)`): an
/// async iterator of `bytes`, also an async context manager.
///
/// ```python
/// async with app.request_stream("acme/tools/tail", b"log") as stream:
///     async for chunk in stream:
///         print(chunk)
/// ```
#[pyclass(frozen, module = "slim_agents")]
pub struct RequestStream {
    state: Arc<tokio::sync::Mutex<StreamState>>,
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        // Dropping the last handle of an open stream cancels the call; that
        // needs the runtime.
        let _g = pyo3_async_runtimes::tokio::get_runtime().enter();
        if let Ok(mut s) = self.state.try_lock() {
            *s = StreamState::Done;
        }
    }
}

#[pymethods]
impl RequestStream {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        spawn_step(py, "__anext__", async move {
            let mut guard = CancelOnDrop {
                state: Some(Arc::clone(&state)),
            };
            let mut st = state.lock().await;
            if let StreamState::NotStarted { .. } = &*st {
                let StreamState::NotStarted {
                    app,
                    service,
                    data,
                    timeout,
                } = std::mem::replace(&mut *st, StreamState::Done)
                else {
                    return Step::End;
                };
                match app.request_stream(&service, &data, timeout).await {
                    Ok(s) => *st = StreamState::Open(s),
                    Err(e) => {
                        guard.state = None;
                        return Step::Fail(e);
                    }
                }
            }
            let r = match &*st {
                StreamState::Open(s) => s.next().await,
                _ => Ok(None),
            };
            guard.state = None;
            match r {
                Ok(Some(b)) => Step::Item(PyBytesOut(b)),
                Ok(None) => {
                    *st = StreamState::Done;
                    Step::End
                }
                Err(e) => {
                    *st = StreamState::Done;
                    Step::Fail(e)
                }
            }
        })
    }

    /// Cancels the call (if still running) and ends the iteration.
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        spawn(py, "aclose", async move {
            *state.lock().await = StreamState::Done;
            Ok(())
        })
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        spawn(
            py,
            "__aenter__",
            async move { Ok::<_, app::SlimError>(slf) },
        )
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc_type: Option<Bound<'py, PyAny>>,
        _exc: Option<Bound<'py, PyAny>>,
        _tb: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        spawn(py, "__aexit__", async move {
            *state.lock().await = StreamState::Done;
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        let s = match self.state.try_lock() {
            Ok(g) => match &*g {
                StreamState::NotStarted { .. } => "not started",
                StreamState::Open(_) => "open",
                StreamState::Done => "done",
            },
            Err(_) => "busy",
        };
        format!("<RequestStream {s}>")
    }
}

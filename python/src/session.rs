//! `Session`: one class for point-to-point sessions and group channels.

use pyo3::prelude::*;
use pyo3::types::PyList;
use slim_client::app;

use crate::call::{Step, spawn, spawn_step};
use crate::conv::{payload, py_str, timeout_arg};
use crate::rt::{InRt, within};
use crate::values::{EventOut, Member, MsgOut};

/// A session: point-to-point (`kind == "p2p"`) or a group channel
/// (`kind == "group"`), whatever this end's `role` (`"initiator"`,
/// `"responder"`, `"moderator"` or `"member"`).
///
/// Iterating yields messages until the session is closed (by the peer, the
/// moderator or this end); `async with` closes it on exit.
///
/// ```python
/// async with await app.open_session("acme/tools/echo") as s:
///     await s.publish(b"ping")
///     reply = await s.receive(timeout=5)
///
/// async for msg in channel:
///     print(msg.source, msg.payload)
/// ```
#[pyclass(frozen, module = "slim_agents")]
pub struct Session {
    inner: InRt<app::Session>,
}

impl Session {
    pub fn new(s: app::Session) -> Session {
        Session {
            inner: InRt::new(s),
        }
    }

    fn handle(&self) -> app::Session {
        (*self.inner).clone()
    }
}

/// Converts an [`app::Session`] under the GIL.
pub struct SessionOut(pub app::Session);

impl<'py> IntoPyObject<'py> for SessionOut {
    type Target = Session;
    type Output = Bound<'py, Session>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Session>> {
        Bound::new(py, Session::new(self.0))
    }
}

struct Members(Vec<slim_client::channel::MemberInfo>);

impl<'py> IntoPyObject<'py> for Members {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .0
            .into_iter()
            .map(|m| Bound::new(py, Member::from_info(m)))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }
}

#[pymethods]
impl Session {
    /// `"p2p"` or `"group"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().as_str()
    }

    /// `"initiator"`, `"responder"`, `"moderator"` or `"member"`.
    #[getter]
    fn role(&self) -> &'static str {
        self.inner.role().as_str()
    }

    /// The channel's name, or the peer's full name (p2p).
    #[getter]
    fn name(&self) -> String {
        self.inner.name()
    }

    /// The peer's SPIFFE ID as its node authenticated it (p2p; `None` for groups).
    #[getter]
    fn peer_spiffe_id(&self) -> Option<String> {
        self.inner.peer_spiffe_id()
    }

    /// Whether messages are end-to-end encrypted with MLS.
    #[getter]
    fn mls(&self) -> bool {
        self.inner.is_mls()
    }

    /// Whether delivery is acknowledged and retransmitted (p2p; groups always).
    #[getter]
    fn reliable(&self) -> bool {
        self.inner.is_reliable()
    }

    /// Sends `data` (bytes-like): to the peer (p2p) or to every member of the
    /// channel (MLS-encrypted when on). Returns once queued.
    ///
    /// ```python
    /// await session.publish(b"hello")
    /// ```
    fn publish<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(data)?;
        let s = self.handle();
        spawn(py, "publish", async move { s.publish(&data).await })
    }

    /// Alias of `publish`.
    fn send<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.publish(py, data)
    }

    /// The next message (membership notices are skipped). Raises
    /// `ClosedError` once the session has ended, `TimeoutError` after
    /// `timeout` seconds (`None`: wait forever).
    ///
    /// ```python
    /// msg = await session.receive(timeout=5)
    /// ```
    #[pyo3(signature = (timeout=None))]
    fn receive<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_arg(timeout)?;
        let s = self.handle();
        spawn(py, "receive", async move {
            within(t, "no message", s.receive()).await.map(MsgOut)
        })
    }

    /// The next message or membership notice (`Message`, `MemberJoined`,
    /// `MemberLeft`).
    ///
    /// ```python
    /// ev = await channel.next_event(timeout=10)
    /// if isinstance(ev, slim.MemberJoined):
    ///     print("joined:", ev.name)
    /// ```
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_arg(timeout)?;
        let s = self.handle();
        spawn(py, "next_event", async move {
            within(t, "no event", s.next_event()).await.map(EventOut)
        })
    }

    /// Moderator: invites `name` (a full name or a service name) and returns
    /// once it has joined. Others raise `WrongRoleError`.
    ///
    /// ```python
    /// await channel.invite("acme/tools/scanner")
    /// ```
    fn invite<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let s = self.handle();
        spawn(py, "invite", async move { s.invite(&name).await })
    }

    /// Moderator: removes a member (full name, unique service name or SPIFFE ID).
    fn remove<'py>(
        &self,
        py: Python<'py>,
        name_or_spiffe_id: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = self.handle();
        spawn(
            py,
            "remove",
            async move { s.remove(&name_or_spiffe_id).await },
        )
    }

    /// Group: the roster (moderator included), a list of `Member`.
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.handle();
        spawn(py, "members", async move { s.members().await.map(Members) })
    }

    /// Ends the session: p2p closes once everything sent is acknowledged, a
    /// moderator closes the channel, a member leaves. Idempotent.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.handle();
        spawn(py, "close", async move { s.close().await })
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.handle();
        spawn_step(py, "__anext__", async move {
            Step::from_result(s.receive().await.map(MsgOut))
        })
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        spawn(
            py,
            "__aenter__",
            async move { Ok::<_, app::SlimError>(slf) },
        )
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<Bound<'py, PyAny>>,
        _exc: Option<Bound<'py, PyAny>>,
        _tb: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // With an exception in flight, a failing close must not replace it.
        let quiet = exc_type.is_some_and(|t| !t.is_none());
        let s = self.handle();
        spawn(py, "__aexit__", async move {
            match s.close().await {
                Err(_) if quiet => Ok(false),
                r => r.map(|()| false),
            }
        })
    }

    fn __repr__(&self) -> String {
        let mut r = format!(
            "<Session {} {} name={} mls={}",
            self.inner.kind().as_str(),
            self.inner.role().as_str(),
            py_str(&self.inner.name()),
            if self.inner.is_mls() { "True" } else { "False" }
        );
        if let Some(id) = self.inner.peer_spiffe_id() {
            r.push_str(&format!(" peer_spiffe_id={}", py_str(&id)));
        }
        r.push('>');
        r
    }
}

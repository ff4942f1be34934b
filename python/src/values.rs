//! Value classes: `Message`, `Member`, `MemberJoined`, `MemberLeft`, `Request`.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use slim_client::app;

use crate::call::spawn;
use crate::conv::{payload, py_str};
use crate::rt::InRt;

/// `b'...'` of at most 40 bytes, for reprs.
fn short_bytes(b: &[u8]) -> String {
    const MAX: usize = 40;
    let mut s = String::from("b'");
    for &c in b.iter().take(MAX) {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('\'');
    if b.len() > MAX {
        s.push_str(&format!("…({} bytes)", b.len()));
    }
    s
}

fn opt_repr(v: &Option<String>) -> String {
    match v {
        Some(s) => py_str(s),
        None => "None".into(),
    }
}

/// A message: raw (`app.receive()`), or in a session (`session.receive()`).
///
/// Attributes: `payload` (bytes), `source` (the sender's full name),
/// `spiffe_id` (the sender's SPIFFE ID — proven by MLS in an MLS channel,
/// authenticated by the sender's node otherwise), `name` (the name or channel
/// it was sent to), `seq` and `epoch` (sessions / MLS, else `None`),
/// `mode` (`"multicast"`, `"anycast"` or `"unicast"`).
///
/// ```python
/// msg = await app.receive()
/// print(msg.source, msg.spiffe_id, msg.payload.decode())
/// ```
#[pyclass(frozen, module = "slim_agents")]
pub struct Message {
    #[pyo3(get)]
    payload: Py<PyBytes>,
    #[pyo3(get)]
    source: String,
    #[pyo3(get)]
    spiffe_id: Option<String>,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    seq: Option<u64>,
    #[pyo3(get)]
    epoch: Option<u64>,
    #[pyo3(get)]
    mode: &'static str,
}

#[pymethods]
impl Message {
    fn __repr__(&self, py: Python<'_>) -> String {
        let mut s = format!(
            "Message(source={}, name={}, spiffe_id={}, payload={}",
            py_str(&self.source),
            py_str(&self.name),
            opt_repr(&self.spiffe_id),
            short_bytes(self.payload.bind(py).as_bytes())
        );
        if let Some(q) = self.seq {
            s.push_str(&format!(", seq={q}"));
        }
        if let Some(e) = self.epoch {
            s.push_str(&format!(", epoch={e}"));
        }
        s.push_str(&format!(", mode={})", py_str(self.mode)));
        s
    }
}

/// Converts an [`app::Message`] under the GIL.
pub struct MsgOut(pub app::Message);

impl<'py> IntoPyObject<'py> for MsgOut {
    type Target = Message;
    type Output = Bound<'py, Message>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Message>> {
        let m = self.0;
        Bound::new(
            py,
            Message {
                payload: PyBytes::new(py, &m.payload).unbind(),
                source: m.source,
                spiffe_id: m.spiffe_id,
                name: m.name,
                seq: m.seq,
                epoch: m.epoch,
                // Session messages without a mode are point-to-point.
                mode: m.mode.map_or("unicast", |m| m.as_str()),
            },
        )
    }
}

/// A member of a group channel: `name` (full name) and `spiffe_id`.
///
/// ```python
/// for m in await channel.members():
///     print(m.name, m.spiffe_id)
/// ```
#[pyclass(frozen, eq, hash, module = "slim_agents")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Member {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    spiffe_id: String,
}

#[pymethods]
impl Member {
    #[new]
    fn new(name: String, spiffe_id: String) -> Self {
        Member { name, spiffe_id }
    }

    fn __repr__(&self) -> String {
        format!(
            "Member(name={}, spiffe_id={})",
            py_str(&self.name),
            py_str(&self.spiffe_id)
        )
    }
}

impl Member {
    pub fn from_info(m: slim_client::channel::MemberInfo) -> Member {
        Member {
            name: m.name,
            spiffe_id: m.spiffe_id,
        }
    }
}

/// A membership notice from `session.next_event()`: `name` joined the channel.
#[pyclass(frozen, eq, hash, module = "slim_agents")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MemberJoined {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    spiffe_id: String,
}

#[pymethods]
impl MemberJoined {
    #[new]
    fn new(name: String, spiffe_id: String) -> Self {
        MemberJoined { name, spiffe_id }
    }

    fn __repr__(&self) -> String {
        format!(
            "MemberJoined(name={}, spiffe_id={})",
            py_str(&self.name),
            py_str(&self.spiffe_id)
        )
    }
}

/// A membership notice from `session.next_event()`: `name` left the channel
/// (or was removed) because of `reason`.
#[pyclass(frozen, eq, hash, module = "slim_agents")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MemberLeft {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    spiffe_id: String,
    #[pyo3(get)]
    reason: String,
}

#[pymethods]
impl MemberLeft {
    #[new]
    fn new(name: String, spiffe_id: String, reason: String) -> Self {
        MemberLeft {
            name,
            spiffe_id,
            reason,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "MemberLeft(name={}, spiffe_id={}, reason={})",
            py_str(&self.name),
            py_str(&self.spiffe_id),
            py_str(&self.reason)
        )
    }
}

/// Converts an [`app::SessionEvent`] under the GIL.
pub struct EventOut(pub app::SessionEvent);

impl<'py> IntoPyObject<'py> for EventOut {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.0 {
            app::SessionEvent::Message(m) => MsgOut(m).into_pyobject(py)?.into_any(),
            app::SessionEvent::MemberJoined(m) => Bound::new(
                py,
                MemberJoined {
                    name: m.name,
                    spiffe_id: m.spiffe_id,
                },
            )?
            .into_any(),
            app::SessionEvent::MemberLeft { member, reason } => Bound::new(
                py,
                MemberLeft {
                    name: member.name,
                    spiffe_id: member.spiffe_id,
                    reason,
                },
            )?
            .into_any(),
        })
    }
}

/// An RPC to answer (from `app.next_request()` / `app.requests()`).
///
/// Attributes: `payload` (bytes), `caller` (full name), `caller_spiffe_id`,
/// `deadline` (seconds the caller had left when the request arrived),
/// `cancelled` (the caller gave up or its deadline passed).
/// Answer with `await req.reply(data)`, or stream with `await req.send(item)`
/// then `await req.end()`, or refuse with `await req.fail(reason)`.
///
/// ```python
/// async for req in app.requests():
///     await req.reply(req.payload.upper())
/// ```
#[pyclass(frozen, module = "slim_agents")]
pub struct Request {
    inner: InRt<app::Request>,
    #[pyo3(get)]
    payload: Py<PyBytes>,
    #[pyo3(get)]
    deadline: f64,
}

#[pymethods]
impl Request {
    #[getter]
    fn caller(&self) -> &str {
        &self.inner.caller
    }

    #[getter]
    fn caller_spiffe_id(&self) -> Option<&str> {
        self.inner.caller_spiffe_id.as_deref()
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// Answers a unary call with `data` (once).
    ///
    /// ```python
    /// await req.reply(b"pong")
    /// ```
    fn reply<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(data)?;
        let r = (*self.inner).clone();
        spawn(py, "reply", async move { r.reply(&data).await })
    }

    /// Sends one response of a stream (then `end()`).
    ///
    /// ```python
    /// for chunk in chunks:
    ///     await req.send(chunk)
    /// await req.end()
    /// ```
    fn send<'py>(&self, py: Python<'py>, item: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(item)?;
        let r = (*self.inner).clone();
        spawn(py, "send", async move { r.send(&data).await })
    }

    /// Ends a stream of responses.
    fn end<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let r = (*self.inner).clone();
        spawn(py, "end", async move { r.end().await })
    }

    /// Fails the call: the caller gets a `RemoteError` with `reason`.
    fn fail<'py>(&self, py: Python<'py>, reason: String) -> PyResult<Bound<'py, PyAny>> {
        let r = (*self.inner).clone();
        spawn(py, "fail", async move { r.fail(&reason).await })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Request(caller={}, caller_spiffe_id={}, payload={}, deadline={:.3})",
            py_str(&self.inner.caller),
            opt_repr(&self.inner.caller_spiffe_id),
            short_bytes(self.payload.bind(py).as_bytes()),
            self.deadline
        )
    }
}

/// Converts an [`app::Request`] under the GIL.
pub struct RequestOut(pub app::Request);

impl<'py> IntoPyObject<'py> for RequestOut {
    type Target = Request;
    type Output = Bound<'py, Request>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Request>> {
        let r = self.0;
        let deadline = r
            .deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs_f64();
        Bound::new(
            py,
            Request {
                payload: PyBytes::new(py, &r.payload).unbind(),
                deadline,
                inner: InRt::new(r),
            },
        )
    }
}

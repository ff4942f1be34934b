//! The exception tree: one class per [`app::SlimError`] variant, all under
//! `slim_agents.SlimError`, each carrying the reason as `str(e)` and `.reason`.
//!
//! Classes with a single base come from `create_exception!`; the ones that
//! also subclass a builtin (`TimeoutError`, `InvalidNameError`,
//! `InvalidArgumentError`) need two bases, which `create_exception!` cannot
//! express, so they are made once with `type(name, bases, dict)`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use slim_client::app;

create_exception!(
    slim_agents,
    SlimError,
    PyException,
    "Base class of every error raised by slim_agents. `str(e)` and `e.reason` are the reason."
);
create_exception!(
    slim_agents,
    ConnectError,
    SlimError,
    "The node's name did not resolve, the node could not be reached, or TLS was refused."
);
create_exception!(
    slim_agents,
    IdentityError,
    SlimError,
    "The identity could not be obtained or used (Workload API, SVID files, JWT-SVID)."
);
create_exception!(
    slim_agents,
    PermissionDenied,
    SlimError,
    "Refused by the node's authorization policy (publish, subscribe, register, join)."
);
create_exception!(
    slim_agents,
    JoinRefused,
    PermissionDenied,
    "The channel's moderator refused the join request (admission)."
);
create_exception!(
    slim_agents,
    NoRouteError,
    SlimError,
    "Nobody subscribes to or serves that name."
);
create_exception!(
    slim_agents,
    ClosedError,
    SlimError,
    "The app or session is closed (also: this member was removed from the channel)."
);
create_exception!(
    slim_agents,
    MlsError,
    SlimError,
    "End-to-end (MLS) encryption failed."
);
create_exception!(
    slim_agents,
    WrongRoleError,
    SlimError,
    "An operation of another role, e.g. `invite` on a member."
);
create_exception!(
    slim_agents,
    RemoteError,
    SlimError,
    "The RPC responder failed the call."
);
create_exception!(
    slim_agents,
    DeliveryFailed,
    SlimError,
    "A reliable message was not acknowledged after every retry."
);
create_exception!(
    slim_agents,
    ProtocolError,
    SlimError,
    "Something the peer or the node sent could not be understood."
);

static TIMEOUT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_NAME: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_ARGUMENT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn two_bases<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    builtin: Bound<'py, PyType>,
    doc: &str,
) -> PyResult<Bound<'py, PyType>> {
    let ty = cell.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(py, [py.get_type::<SlimError>(), builtin])?;
        let dict = PyDict::new(py);
        dict.set_item("__module__", "slim_agents")?;
        dict.set_item("__doc__", doc)?;
        let t = py
            .get_type::<PyType>()
            .call1((name, bases, dict))?
            .cast_into::<PyType>()?;
        Ok(t.unbind())
    })?;
    Ok(ty.bind(py).clone())
}

/// `slim_agents.TimeoutError` (also a `builtins.TimeoutError`).
pub fn timeout_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    two_bases(
        py,
        &TIMEOUT,
        "TimeoutError",
        py.get_type::<PyTimeoutError>(),
        "An operation did not complete in time (also a builtins.TimeoutError).",
    )
}

/// `slim_agents.InvalidNameError` (also a `ValueError`).
pub fn invalid_name_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    two_bases(
        py,
        &INVALID_NAME,
        "InvalidNameError",
        py.get_type::<PyValueError>(),
        "A malformed SLIM name, e.g. not `org/namespace/service` (also a ValueError).",
    )
}

/// `slim_agents.InvalidArgumentError` (also a `ValueError`).
pub fn invalid_argument_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    two_bases(
        py,
        &INVALID_ARGUMENT,
        "InvalidArgumentError",
        py.get_type::<PyValueError>(),
        "An invalid argument or configuration, e.g. a malformed node URL (also a ValueError).",
    )
}

/// The reason text (without the variant's prefix: the class says that).
pub fn reason(e: &app::SlimError) -> String {
    use app::SlimError as E;
    match e {
        E::Connect(r)
        | E::Identity(r)
        | E::PermissionDenied(r)
        | E::JoinRefused(r)
        | E::NoRoute(r)
        | E::Timeout(r)
        | E::Closed(r)
        | E::Mls(r)
        | E::Remote(r)
        | E::DeliveryFailed(r)
        | E::InvalidName(r)
        | E::Invalid(r)
        | E::Protocol(r) => r.clone(),
        E::WrongRole { .. } => e.to_string(),
    }
}

fn from_type(ty: PyResult<Bound<'_, PyType>>, reason: String) -> PyErr {
    match ty {
        Ok(t) => PyErr::from_type(t, (reason,)),
        Err(e) => e,
    }
}

/// The Python exception of `e`.
pub fn to_pyerr(py: Python<'_>, e: &app::SlimError) -> PyErr {
    use app::SlimError as E;
    let r = reason(e);
    match e {
        E::Connect(_) => ConnectError::new_err(r),
        E::Identity(_) => IdentityError::new_err(r),
        E::PermissionDenied(_) => PermissionDenied::new_err(r),
        E::JoinRefused(_) => JoinRefused::new_err(r),
        E::NoRoute(_) => NoRouteError::new_err(r),
        E::Timeout(_) => from_type(timeout_type(py), r),
        E::Closed(_) => ClosedError::new_err(r),
        E::Mls(_) => MlsError::new_err(r),
        E::WrongRole { .. } => WrongRoleError::new_err(r),
        E::Remote(_) => RemoteError::new_err(r),
        E::DeliveryFailed(_) => DeliveryFailed::new_err(r),
        E::InvalidName(_) => from_type(invalid_name_type(py), r),
        E::Invalid(_) => from_type(invalid_argument_type(py), r),
        E::Protocol(_) => ProtocolError::new_err(r),
    }
}

/// Adds the classes to the module and the `reason` property to the base.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = py.get_type::<SlimError>();
    let prop = py.eval(
        c"property(lambda self: str(self.args[0]) if self.args else '', doc='The reason, as text (same as str(e)).')",
        None,
        None,
    )?;
    base.setattr("reason", prop)?;
    m.add("SlimError", base)?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("IdentityError", py.get_type::<IdentityError>())?;
    m.add("PermissionDenied", py.get_type::<PermissionDenied>())?;
    m.add("JoinRefused", py.get_type::<JoinRefused>())?;
    m.add("NoRouteError", py.get_type::<NoRouteError>())?;
    m.add("TimeoutError", timeout_type(py)?)?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("MlsError", py.get_type::<MlsError>())?;
    m.add("WrongRoleError", py.get_type::<WrongRoleError>())?;
    m.add("RemoteError", py.get_type::<RemoteError>())?;
    m.add("DeliveryFailed", py.get_type::<DeliveryFailed>())?;
    m.add("InvalidNameError", invalid_name_type(py)?)?;
    m.add("InvalidArgumentError", invalid_argument_type(py)?)?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    Ok(())
}

//! Conversions of Python arguments (payloads, timeouts, durations) and of strings for `__repr__`.

use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

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

//! The `--output` format (text or JSON), the JSON printing and tables every
//! command shares, and how a failed command reports its error.

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable lines and tables.
    Text,
    /// One JSON document per result (per line for streams); errors as
    /// `{"error": {"kind", "message"}}` on stdout.
    Json,
}

pub(crate) fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Failures slimctl itself decides on, each with a stable `kind` for
/// `-o json` (the SDK's and the controller's errors have theirs mapped in
/// [`error_kind`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// A publish nobody subscribes to, under `--require-route`.
    #[error("no route: nobody subscribes to {name} ({reason})")]
    NoRoute { name: String, reason: String },
    /// The node refused a publish (policy, bad name...): `code` is the
    /// node's error code.
    #[error("the node refused the publish ({code}): {reason}")]
    Refused { code: String, reason: String },
    #[error("{0}")]
    Timeout(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Context(String),
    /// The command already printed its result, which says what failed
    /// (e.g. `identity check`'s verdict): under `-o json` the error goes to
    /// stderr only, so stdout stays one JSON document.
    #[error("{0}")]
    Reported(String),
}

/// A stable, machine-readable name for what went wrong: the first cause in
/// the chain whose type we know decides.
pub(crate) fn error_kind(e: &anyhow::Error) -> String {
    use slim_client::ClientError as C;
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::NoRoute { .. } => "no_route".into(),
                Failure::Refused { code, .. } => code.clone(),
                Failure::Timeout(_) => "timeout".into(),
                Failure::Interrupted => "interrupted".into(),
                Failure::Context(_) => "context".into(),
                Failure::Reported(_) => "reported".into(),
            };
        }
        if let Some(c) = cause.downcast_ref::<C>() {
            return match c {
                C::Connect { .. } => "connect",
                C::Resolve { .. } => "resolve",
                C::Tls(_) => "tls",
                C::Rejected { .. } => "rejected",
                C::Timeout(_) => "timeout",
                C::Closed | C::Disconnected { .. } => "disconnected",
                C::Subscribe { .. } => "subscribe",
                C::Name(_) => "invalid_name",
                _ => "protocol",
            }
            .into();
        }
        if let Some(r) = cause.downcast_ref::<slim_client::session::rpc::RpcError>() {
            use slim_client::session::rpc::RpcError as R;
            return match r {
                R::Timeout(_) => "timeout",
                R::NoResponder { .. } => "no_responder",
                R::Remote(_) => "remote",
                _ => "rpc",
            }
            .into();
        }
        if let Some(c) = cause.downcast_ref::<slim_controller::ConnError>() {
            use slim_controller::ConnError as K;
            return match c {
                K::Resolve { .. } => "resolve",
                K::Connect { .. } => "connect",
                K::Timeout(_) => "timeout",
                K::Refused { .. } => "refused",
                K::Tls(_) => "tls",
                _ => "controller",
            }
            .into();
        }
        if cause.downcast_ref::<slim_wire::InvalidName>().is_some() {
            return "invalid_name".into();
        }
        if cause.downcast_ref::<slim_auth::AuthError>().is_some() {
            return "identity".into();
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return "io".into();
        }
    }
    "error".into()
}

/// Prints a failed command's error: `{"error": {"kind", "message"}}` on
/// stdout under `-o json` (where a script reads the results), else — or
/// when the command's printed result already tells the failure
/// ([`Failure::Reported`]) — `error: ...` on stderr.
pub(crate) fn report_error(e: &anyhow::Error, out: Output) {
    let message = format!("{e:#}");
    let reported = e
        .chain()
        .any(|c| matches!(c.downcast_ref::<Failure>(), Some(Failure::Reported(_))));
    if out == Output::Json && !reported {
        println!(
            "{}",
            serde_json::json!({"error": {"kind": error_kind(e), "message": message}})
        );
    } else {
        eprintln!("error: {message}");
    }
}

/// A text table: a header row and left-aligned columns, no borders (easy to
/// read and to `grep`/`awk`).
pub(crate) struct Table(comfy_table::Table);

impl Table {
    pub(crate) fn new(head: &[&str]) -> Table {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
            .set_header(head.to_vec());
        Table(t)
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.0.add_row(cells);
    }

    pub(crate) fn print(mut self) {
        // Two spaces between columns, none before the first.
        for c in self.0.column_iter_mut() {
            c.set_padding((0, 2));
        }
        for line in self.0.lines() {
            println!("{}", line.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_first_known_cause() {
        let e = anyhow::Error::new(Failure::NoRoute {
            name: "a/b/c".into(),
            reason: "x".into(),
        })
        .context("publishing");
        assert_eq!(error_kind(&e), "no_route");
        let e = anyhow::Error::new(slim_wire::Name::parse("a/b/*").unwrap_err());
        assert_eq!(error_kind(&e), "invalid_name");
        assert_eq!(error_kind(&anyhow::anyhow!("plain")), "error");
    }
}

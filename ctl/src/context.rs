//! `slimctl context`: named sets of connection settings (node, controller,
//! identity), like `nats context`. Stored as TOML in
//! `$XDG_CONFIG_HOME/slim/contexts.toml` (else `~/.config/slim/`).
//!
//! The context in use is `--context NAME` / `SLIM_CONTEXT`, else the one
//! `context select` chose. Precedence for each setting: flag or its
//! environment variable, then the context, then the built-in default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::output::{Failure, Output, Table, print_json};

/// One named set of settings; every field is optional (absent: the flag's
/// own default applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_socket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// The `--as` name.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub as_name: Option<String>,
}

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Store {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selected: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

/// The context this run uses (set once in `main`, read by the argument
/// types when they resolve a setting the command line left out).
static ACTIVE: OnceLock<Option<Context>> = OnceLock::new();

pub(crate) fn active() -> Option<&'static Context> {
    ACTIVE.get().and_then(Option::as_ref)
}

/// Loads the context named by `--context`/`SLIM_CONTEXT`, else the selected
/// one. A name that does not exist is an error (not silently ignored: the
/// command would reach the wrong node).
pub(crate) fn activate(flag: Option<&str>) -> Result<()> {
    let path = match store_path() {
        Ok(p) => p,
        // No home (e.g. a container): no contexts, unless one was asked for.
        Err(e) if flag.is_some() => return Err(e),
        Err(_) => {
            let _ = ACTIVE.set(None);
            return Ok(());
        }
    };
    let store = load(&path)?;
    let ctx = match flag.map(str::to_owned).or(store.selected.clone()) {
        None => None,
        Some(name) => match store.contexts.get(&name) {
            Some(c) => Some(c.clone()),
            None => {
                return Err(Failure::Context(format!(
                    "no context named {name:?} in {} (see `slimctl context ls`)",
                    path.display()
                ))
                .into());
            }
        },
    };
    let _ = ACTIVE.set(ctx);
    Ok(())
}

/// `$XDG_CONFIG_HOME/slim` (an absolute path, per the XDG spec), else
/// `$HOME/.config/slim`.
fn config_dir() -> Result<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(p) => p,
        None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => bail!("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep contexts"),
        },
    };
    Ok(base.join("slim"))
}

fn store_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("contexts.toml"))
}

fn load(path: &Path) -> Result<Store> {
    match std::fs::read_to_string(path) {
        Ok(s) => toml::from_str(&s).with_context(|| format!("cannot parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Written to a temporary file and renamed, so a crash never leaves half a
/// file behind.
fn save(path: &Path, store: &Store) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, toml::to_string_pretty(store)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Failure::Context(format!(
            "invalid context name {name:?}: use letters, digits, '-', '_' and '.'"
        ))
        .into());
    }
    Ok(())
}

// Parsed once per run: the size of the `add` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum ContextCmd {
    /// Create or replace a context: the settings other commands use when
    /// their flags are not given.
    #[command(after_help = "Examples:
  slimctl context add dev --node 127.0.0.1:4500 --identity target/dev-identity/ops --select
  slimctl context add prod --node slim.prod:4500 --controller ctl.prod:4600 \\
      --spiffe-socket unix:///run/spire/agent.sock --description \"production fleet\"")]
    Add(AddArgs),
    /// Make NAME the context used when --context / SLIM_CONTEXT is absent.
    #[command(after_help = "Example:\n  slimctl context select prod")]
    Select {
        /// The context's name.
        name: String,
    },
    /// The contexts, the selected one marked with `*`.
    #[command(visible_alias = "list", after_help = "Example:\n  slimctl context ls")]
    Ls,
    /// Delete a context (unselecting it if it was selected).
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  slimctl context rm old"
    )]
    Rm {
        /// The context's name.
        name: String,
    },
    /// One context's settings (default: the one in use).
    #[command(
        after_help = "Examples:\n  slimctl context show\n  slimctl context show prod -o json"
    )]
    Show {
        /// The context's name (default: --context / SLIM_CONTEXT, else the selected one).
        name: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct AddArgs {
    /// The context's name (letters, digits, '-', '_', '.').
    name: String,
    /// The node to connect to (`host:port` or `slim://host:port`).
    #[arg(long, value_name = "ADDR")]
    node: Option<String>,
    /// The controller's QUIC address (`host:port`), for admin commands.
    #[arg(long, value_name = "ADDR")]
    controller: Option<String>,
    /// TLS server name (SNI) of the controller.
    #[arg(long, value_name = "NAME")]
    controller_name: Option<String>,
    /// Pin the controller's SPIFFE ID.
    #[arg(long, value_name = "SPIFFE-ID")]
    controller_id: Option<String>,
    /// SVID directory in the spiffe-helper layout (stored as an absolute path).
    #[arg(long, value_name = "DIR")]
    identity: Option<PathBuf>,
    /// SPIFFE Workload API socket of a SPIRE agent.
    #[arg(long, value_name = "SOCKET")]
    spiffe_socket: Option<String>,
    /// Authenticate to nodes with a JWT-SVID for this audience.
    #[arg(long, value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
    /// The name to register as (`--as`).
    #[arg(long = "as", value_name = "NAME")]
    as_name: Option<String>,
    /// Free text shown by `context ls`.
    #[arg(long)]
    description: Option<String>,
    /// Also select the new context.
    #[arg(long)]
    select: bool,
}

pub(crate) fn run(cmd: ContextCmd, flag: Option<&str>, out: Output) -> Result<()> {
    let path = store_path()?;
    let mut store = load(&path)?;
    match cmd {
        ContextCmd::Add(a) => {
            check_name(&a.name)?;
            // Absolute, so the context works from any directory.
            let identity = match a.identity {
                Some(p) if p.is_relative() => Some(std::env::current_dir()?.join(p)),
                other => other,
            };
            let ctx = Context {
                description: a.description,
                node: a.node,
                controller: a.controller,
                controller_name: a.controller_name,
                controller_id: a.controller_id,
                identity,
                spiffe_socket: a.spiffe_socket,
                jwt_audience: a.jwt_audience,
                as_name: a.as_name,
            };
            let replaced = store.contexts.insert(a.name.clone(), ctx).is_some();
            if a.select {
                store.selected = Some(a.name.clone());
            }
            save(&path, &store)?;
            if out == Output::Json {
                print_json(&serde_json::json!({
                    "context": a.name, "replaced": replaced, "selected": a.select, "file": path,
                }))?;
            } else {
                println!(
                    "{} context {}{} in {}",
                    if replaced { "replaced" } else { "added" },
                    a.name,
                    if a.select { " (selected)" } else { "" },
                    path.display()
                );
            }
        }
        ContextCmd::Select { name } => {
            if !store.contexts.contains_key(&name) {
                return Err(Failure::Context(format!(
                    "no context named {name:?} (see `slimctl context ls`)"
                ))
                .into());
            }
            store.selected = Some(name.clone());
            save(&path, &store)?;
            if out == Output::Json {
                print_json(&serde_json::json!({"selected": name}))?;
            } else {
                println!("selected context {name}");
            }
        }
        ContextCmd::Rm { name } => {
            if store.contexts.remove(&name).is_none() {
                return Err(Failure::Context(format!("no context named {name:?}")).into());
            }
            if store.selected.as_deref() == Some(name.as_str()) {
                store.selected = None;
            }
            save(&path, &store)?;
            if out == Output::Json {
                print_json(&serde_json::json!({"removed": name}))?;
            } else {
                println!("removed context {name}");
            }
        }
        ContextCmd::Ls => {
            let in_use = flag.map(str::to_owned).or(store.selected.clone());
            if out == Output::Json {
                let list: Vec<_> = store
                    .contexts
                    .iter()
                    .map(|(n, c)| {
                        serde_json::json!({
                            "name": n,
                            "selected": store.selected.as_deref() == Some(n.as_str()),
                            "in_use": in_use.as_deref() == Some(n.as_str()),
                            "settings": c,
                        })
                    })
                    .collect();
                return print_json(&list);
            }
            if store.contexts.is_empty() {
                eprintln!(
                    "no contexts in {} (add one with `slimctl context add`)",
                    path.display()
                );
                return Ok(());
            }
            let mut t = Table::new(&["", "NAME", "NODE", "CONTROLLER", "DESCRIPTION"]);
            for (n, c) in &store.contexts {
                t.row(vec![
                    if in_use.as_deref() == Some(n.as_str()) {
                        "*".into()
                    } else {
                        String::new()
                    },
                    n.clone(),
                    c.node.clone().unwrap_or_else(|| "-".into()),
                    c.controller.clone().unwrap_or_else(|| "-".into()),
                    c.description.clone().unwrap_or_default(),
                ]);
            }
            t.print();
        }
        ContextCmd::Show { name } => {
            let Some(name) = name.or(flag.map(str::to_owned)).or(store.selected.clone()) else {
                return Err(Failure::Context(
                    "no context selected: pass NAME or `slimctl context select NAME`".into(),
                )
                .into());
            };
            let Some(c) = store.contexts.get(&name) else {
                return Err(Failure::Context(format!("no context named {name:?}")).into());
            };
            if out == Output::Json {
                return print_json(&serde_json::json!({"name": name, "settings": c}));
            }
            println!("context {name} ({})", path.display());
            print!("{}", toml::to_string_pretty(c)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_round_trips_through_toml_and_refuses_unknown_keys() {
        let mut s = Store::default();
        s.contexts.insert(
            "dev".into(),
            Context {
                node: Some("127.0.0.1:4500".into()),
                as_name: Some("ops/cli/me".into()),
                ..Context::default()
            },
        );
        s.selected = Some("dev".into());
        let text = toml::to_string_pretty(&s).unwrap();
        let back: Store = toml::from_str(&text).unwrap();
        assert_eq!(back.contexts, s.contexts);
        assert_eq!(back.selected.as_deref(), Some("dev"));
        assert!(text.contains("as = \"ops/cli/me\""), "{text}");
        assert!(toml::from_str::<Store>("[contexts.x]\nnodes = \"a\"\n").is_err());
    }

    #[test]
    fn context_names_are_checked() {
        assert!(check_name("prod-eu.1_a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
    }
}

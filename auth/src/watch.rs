//! Change notification for files that are reloaded while running (the
//! authorization policy, the JWT bundle): `notify` (inotify on Linux),
//! debounced, with a polling fallback when the OS watcher cannot start.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long a burst of events (an editor's write, truncate, rename) is
/// gathered into one change.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// How often the fallback compares the file's size, mtime and inode.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Tells when one file changed.
///
/// The file's directory is watched, not the file: editors and deployment
/// tools replace files by rename, and Kubernetes swaps a `..data` symlink,
/// both of which a watch on the old inode would miss. Bursts are debounced
/// and changes are coalesced (a bounded channel of one), so a reader that is
/// busy reloading sees one more change, not a backlog.
pub struct FileWatch {
    path: PathBuf,
    how: How,
}

enum How {
    Notify {
        rx: mpsc::Receiver<()>,
        // Dropping the debouncer stops its thread and the OS watch.
        _debouncer: Debouncer<notify::RecommendedWatcher>,
    },
    Poll {
        last: Option<Stamp>,
    },
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("path", &self.path)
            .field(
                "by",
                &match self.how {
                    How::Notify { .. } => "notify",
                    How::Poll { .. } => "polling",
                },
            )
            .finish()
    }
}

type Stamp = (Option<SystemTime>, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}

/// True when an event on `changed` may concern `target`: the file itself, or
/// a `..`-prefixed entry of its directory (Kubernetes' atomic symlink swap).
fn concerns(target: &Path, changed: &Path) -> bool {
    match (target.file_name(), changed.file_name()) {
        (Some(t), Some(c)) => t == c || c.to_string_lossy().starts_with(".."),
        _ => false,
    }
}

impl FileWatch {
    /// Watches `path` (`what` names it in log lines). Falls back to polling,
    /// with a warning saying why, when the OS watcher cannot be set up.
    pub fn new(path: &Path, what: &'static str, debounce: Duration) -> FileWatch {
        let path = path.to_path_buf();
        match Self::notify(&path, what, debounce) {
            Ok(how) => {
                debug!(file = %path.display(), what, "watching for changes");
                FileWatch { path, how }
            }
            Err(e) => {
                warn!(file = %path.display(), what, error = %e, every = ?POLL_EVERY, "cannot watch the file for changes; polling it instead");
                let last = stamp(&path);
                FileWatch {
                    path,
                    how: How::Poll { last },
                }
            }
        }
    }

    fn notify(path: &Path, what: &'static str, debounce: Duration) -> notify::Result<How> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, rx) = mpsc::channel(1);
        let target = path.to_path_buf();
        let mut debouncer = new_debouncer(debounce, move |res: DebounceEventResult| match res {
            Ok(events) => {
                if events.iter().any(|e| concerns(&target, &e.path)) {
                    // Full: a change is already pending, which covers this one.
                    let _ = tx.try_send(());
                }
            }
            Err(e) => {
                warn!(file = %target.display(), what, error = %e, "file watch error; a change may be noticed late");
                let _ = tx.try_send(());
            }
        })?;
        debouncer
            .watcher()
            .watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(How::Notify {
            rx,
            _debouncer: debouncer,
        })
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when changes come from the OS watcher rather than polling.
    pub fn is_notify(&self) -> bool {
        matches!(self.how, How::Notify { .. })
    }

    /// Returns once the file has (probably) changed since the last call.
    /// Cancel-safe.
    pub async fn changed(&mut self) {
        match &mut self.how {
            How::Notify { rx, .. } => {
                if rx.recv().await.is_none() {
                    // The debouncer thread ended (cannot happen while we hold
                    // it); never report a change that did not happen.
                    std::future::pending::<()>().await;
                }
            }
            How::Poll { last } => loop {
                tokio::time::sleep(POLL_EVERY).await;
                let now = stamp(&self.path);
                if now != *last {
                    *last = now;
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concerns_the_file_and_kubernetes_swaps_only() {
        let t = Path::new("/etc/slim/policy.toml");
        assert!(concerns(t, Path::new("/etc/slim/policy.toml")));
        assert!(concerns(t, Path::new("/etc/slim/..data")));
        assert!(!concerns(t, Path::new("/etc/slim/node.toml")));
        assert!(!concerns(t, Path::new("/etc/slim/policy.toml.swp")));
    }

    async fn changed_within(w: &mut FileWatch, d: Duration) -> bool {
        tokio::time::timeout(d, w.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn notices_a_rewrite_and_a_replacement_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.json");
        std::fs::write(&file, "1").unwrap();
        let mut w = FileWatch::new(&file, "test file", Duration::from_millis(50));
        assert!(w.is_notify(), "inotify is available on the test machines");

        // Another file in the directory is not a change.
        std::fs::write(dir.path().join("other.json"), "x").unwrap();
        assert!(!changed_within(&mut w, Duration::from_millis(500)).await);

        std::fs::write(&file, "2").unwrap();
        assert!(changed_within(&mut w, Duration::from_secs(10)).await);

        let tmp = dir.path().join("bundle.json.tmp");
        std::fs::write(&tmp, "3").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert!(changed_within(&mut w, Duration::from_secs(10)).await);
    }
}

//! File helpers shared by the CA and identity code.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::AuthError;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a file, reporting a missing one as [`AuthError::MissingFile`] so the
/// operator sees which of the several expected files is absent.
pub(crate) fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, AuthError> {
    fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            AuthError::MissingFile {
                path: path.to_path_buf(),
                what,
            }
        } else {
            AuthError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn open_options(mode: u32) -> fs::OpenOptions {
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts
}

/// Creates `path`, failing if it already exists. The mode applies from creation,
/// so a private key is never readable by others, even briefly.
pub(crate) fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), AuthError> {
    let mut f = open_options(mode)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Replaces `path` atomically (write to a sibling temp file, then rename) so a
/// process watching the directory for rotation never reads a half-written file.
pub(crate) fn write_replace(path: &Path, data: &[u8], mode: u32) -> Result<(), AuthError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so concurrent writers never share a temp file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp: PathBuf = path.with_file_name(format!(".{file_name}.tmp.{}.{n}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result =
        write_new(&tmp, data, mode).and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Warns when a private key file is readable by group or others.
pub(crate) fn warn_if_key_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "private key file is accessible to group/others; expected mode 0600"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

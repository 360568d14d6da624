//! The control API's own bearer token: a file in the state directory,
//! created by the agent (32 random bytes, hex, mode 0600) when missing,
//! re-read when it changes, compared in constant time.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Shortest token the token file may hold.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("control API token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "control API token file {path} is readable by group or others (mode {mode:o}): run chmod 600 {path}"
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error(
        "control API token file {path} holds fewer than {MIN_TOKEN_LEN} characters: write a long random token (or delete the file and the agent creates one)"
    )]
    TooShort { path: PathBuf },
}

/// Creates the token file (32 random bytes, hex, mode 0600) unless it
/// exists; an existing file must not be readable by group or others.
pub fn ensure_token_file(path: &Path) -> Result<(), TokenFileError> {
    let io = |source| TokenFileError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenFileError::Insecure {
                    path: path.to_owned(),
                    mode,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut raw = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .map_err(io)?;
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            // create_new: never clobber a token another process just wrote
            // (then check that one instead).
            let mut f = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return ensure_token_file(path);
                }
                Err(e) => return Err(io(e)),
            };
            f.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
            tracing::info!(file = %path.display(), "created the control API token file");
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

/// mtime seconds, mtime nanoseconds, size: a changed file differs in one.
type Stamp = (i64, i64, u64);

/// Reads the token file again when its mtime or size changed, so
/// rotating the token needs no restart.
pub(super) struct TokenFile {
    pub(super) path: PathBuf,
    pub(super) cached: Mutex<Option<(Stamp, Vec<u8>)>>,
}

impl TokenFile {
    pub(super) fn current(&self) -> Result<Vec<u8>, TokenFileError> {
        let io = |source| TokenFileError::Io {
            path: self.path.clone(),
            source,
        };
        let m = std::fs::metadata(&self.path).map_err(io)?;
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenFileError::Insecure {
                path: self.path.clone(),
                mode,
            });
        }
        let stamp = (m.mtime(), m.mtime_nsec(), m.size());
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, t)) = c.as_ref()
            && *s == stamp
        {
            return Ok(t.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let token = text.trim().as_bytes().to_vec();
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenFileError::TooShort {
                path: self.path.clone(),
            });
        }
        *c = Some((stamp, token.clone()));
        Ok(token)
    }
}

/// Equal contents, in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        // Compare with b's byte or, past its end, a byte of a itself, so
        // the loop length depends on the presented token only.
        let y = b.get(i).copied().unwrap_or(!*x);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abcdefgh", b"abcdefgh"));
        assert!(!ct_eq(b"abcdefgh", b"abcdefgx"));
        assert!(!ct_eq(b"abcdefg", b"abcdefgh"));
        assert!(!ct_eq(b"abcdefgh", b"abcdefg"));
        assert!(!ct_eq(b"", b"a"));
        assert!(!ct_eq(&[7u8; 300], &[7u8; 44]));
    }
}

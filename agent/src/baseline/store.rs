//! Baselines on disk: `<state_dir>/baselines.json`.
//!
//! Format: one header line of JSON
//! `{"format":"tollgate-baselines","version":1,"sha256":"<hex>","bytes":N}`,
//! a newline, then N bytes of JSON payload ([`BaselinesState`]). The
//! checksum covers the payload bytes exactly as stored. Writes are atomic:
//! a temporary file in the same directory, fsync, rename, fsync of the
//! directory, so a crash leaves the old file or the new one, never half.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::BaselinesState;

pub const FILE_NAME: &str = "baselines.json";
pub const FORMAT: &str = "tollgate-baselines";
/// Bump when the payload changes incompatibly.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("baselines file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "baselines file {path} is not a Tollgate baselines file ({why}); pass a file written by `tollgate baseline export` or by the agent"
    )]
    Format { path: PathBuf, why: String },
    #[error(
        "baselines file {path} has format version {found}, this tollgate reads version {expected}: export it again with a matching tollgate, or delete it to relearn"
    )]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "baselines file {path} is corrupt: checksum sha256 {found} does not match the header's {expected}; restore a good copy (or delete it to relearn)"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("baselines file {path}: cannot decode the payload: {why}")]
    Decode { path: PathBuf, why: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    sha256: String,
    bytes: usize,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serializes a state into the file format.
pub fn encode(state: &BaselinesState) -> Vec<u8> {
    let payload = serde_json::to_vec(state).expect("baseline state serializes");
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        sha256: hex(&Sha256::digest(&payload)),
        bytes: payload.len(),
    };
    let mut out = serde_json::to_vec(&header).expect("header serializes");
    out.push(b'\n');
    out.extend_from_slice(&payload);
    out
}

/// Parses and verifies the file format (`path` names the input in errors).
pub fn decode(path: &Path, data: &[u8]) -> Result<BaselinesState, StoreError> {
    let format = |why: String| StoreError::Format {
        path: path.to_owned(),
        why,
    };
    let nl = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| format("no header line".into()))?;
    let header: Header = serde_json::from_slice(&data[..nl])
        .map_err(|e| format(format!("unreadable header: {e}")))?;
    if header.format != FORMAT {
        return Err(format(format!("header format is {:?}", header.format)));
    }
    if header.version != VERSION {
        return Err(StoreError::Version {
            path: path.to_owned(),
            found: header.version,
            expected: VERSION,
        });
    }
    let payload = &data[nl + 1..];
    let found = hex(&Sha256::digest(payload));
    if payload.len() != header.bytes || found != header.sha256 {
        return Err(StoreError::Checksum {
            path: path.to_owned(),
            expected: header.sha256,
            found: format!(
                "{found} over {} bytes (header says {})",
                payload.len(),
                header.bytes
            ),
        });
    }
    serde_json::from_slice(payload).map_err(|e| StoreError::Decode {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

pub fn load(path: &Path) -> Result<BaselinesState, StoreError> {
    let data = std::fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode(path, &data)
}

/// Writes atomically: temp file, fsync, rename, fsync of the directory.
pub fn save(path: &Path, state: &BaselinesState) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| FILE_NAME.into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(state))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io)
}

/// What `tollgate baseline import` did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportReport {
    /// Classes taken from the file that the node did not have.
    pub added: Vec<String>,
    /// Classes the file replaced (the node's own model of them is gone).
    pub replaced: Vec<String>,
    /// The node's classes the file does not mention (kept as they were).
    pub kept: Vec<String>,
    pub written: PathBuf,
}

/// `tollgate baseline export`: verifies the state dir's file and writes a
/// copy to `out`.
pub fn export(state_dir: &Path, out: &Path) -> Result<usize, StoreError> {
    let state = load(&state_dir.join(FILE_NAME))?;
    save(out, &state)?;
    Ok(state.classes.len())
}

/// `tollgate baseline import`: merges per class. Every class in the file
/// replaces the node's class of the same name; the node's other classes
/// are kept. The file is verified (format, version, checksum) before
/// anything is written. Run it while the agent is stopped: a running agent
/// writes its own baselines on its next save.
pub fn import(state_dir: &Path, file: &Path) -> Result<ImportReport, StoreError> {
    let incoming = load(file)?;
    let target = state_dir.join(FILE_NAME);
    let mut local = match load(&target) {
        Ok(s) => s,
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            BaselinesState::default()
        }
        Err(e) => return Err(e),
    };
    let mut report = ImportReport {
        written: target.clone(),
        ..ImportReport::default()
    };
    for name in local.classes.keys() {
        if !incoming.classes.contains_key(name) {
            report.kept.push(name.clone());
        }
    }
    for (name, class) in incoming.classes {
        if local.classes.insert(name.clone(), class).is_some() {
            report.replaced.push(name);
        } else {
            report.added.push(name);
        }
    }
    save(&target, &local)?;
    Ok(report)
}

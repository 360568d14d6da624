//! Replay of recorded windows (JSON lines of [`WindowSample`]) through the
//! baselines and detectors, with time taken from the samples: hours of
//! behaviour in seconds. `tollgate replay` and the evaluation use it.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{Engine, Finding};
use crate::collect::WindowSample;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Baselines(#[from] crate::baseline::StoreError),
    #[error("writing findings: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading recorded windows {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "recorded windows {path}, line {line}: {why} (each line must be one JSON WindowSample, as `tollgate synth` writes)"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// Reads JSON lines; blank lines are skipped, any other bad line is an
/// error naming its number.
pub fn read_jsonl(path: &Path) -> Result<Vec<WindowSample>, ReplayError> {
    let file = std::fs::File::open(path).map_err(|source| ReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ReplayError::Read {
            path: path.to_owned(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let s = serde_json::from_str(&line).map_err(|e| ReplayError::Parse {
            path: path.to_owned(),
            line: i + 1,
            why: e.to_string(),
        })?;
        out.push(s);
    }
    Ok(out)
}

/// Writes samples as JSON lines.
pub fn write_jsonl(mut w: impl Write, samples: &[WindowSample]) -> std::io::Result<()> {
    for s in samples {
        serde_json::to_writer(&mut w, s)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplaySummary {
    pub windows: u64,
    pub findings: u64,
    pub firing_at_end: usize,
    pub classes_learned: Vec<String>,
}

/// Runs samples (in time order) through the engine, calling `emit` for
/// every finding. After each change of window end, pods that stopped
/// sending windows are swept (their findings resolve) as in the agent.
pub fn run(
    engine: &mut Engine,
    samples: impl IntoIterator<Item = WindowSample>,
    mut emit: impl FnMut(&Finding),
) -> ReplaySummary {
    let mut summary = ReplaySummary::default();
    let mut last_end: Option<SystemTime> = None;
    for s in samples {
        if last_end.is_some_and(|t| t != s.end) {
            for f in engine.sweep(last_end.expect("checked")) {
                summary.findings += 1;
                emit(&f);
            }
        }
        last_end = Some(s.end);
        summary.windows += 1;
        for f in engine.observe(&s) {
            summary.findings += 1;
            emit(&f);
        }
    }
    summary.firing_at_end = engine.firing().count();
    summary.classes_learned = engine
        .baselines()
        .classes()
        .filter(|(_, c)| c.learned())
        .map(|(k, _)| k.clone())
        .collect();
    summary
}

/// `tollgate replay`: reads recorded windows, optionally starts from and
/// saves back the baselines in `baselines_dir`, prints every finding as a
/// JSON line on stdout.
pub fn replay_file(
    cfg: &super::DetectConfig,
    windows: &Path,
    baselines_dir: Option<&Path>,
) -> Result<ReplaySummary, ReplayError> {
    let samples = read_jsonl(windows)?;
    let base = match baselines_dir {
        Some(d) => crate::baseline::Baselines::load_dir(d, cfg)?,
        None => crate::baseline::Baselines::new(cfg),
    };
    let mut engine = Engine::new(cfg, base);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut err = None;
    let summary = run(&mut engine, samples, |f| {
        if err.is_none()
            && let Err(e) = serde_json::to_writer(&mut out, f)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
        {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(ReplayError::Write(e));
    }
    out.flush().map_err(ReplayError::Write)?;
    if let Some(d) = baselines_dir {
        engine.baselines().save_dir(d)?;
    }
    Ok(summary)
}

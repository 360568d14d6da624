//! The hostile config corpus (fuzz/corpus/config, also the seed corpus of
//! the cargo-fuzz target) through `tollgate config check`: every file is
//! refused with exit 64 (never a panic or a crash), the message names what
//! its first line promises (`# expect: <text>`: the key, or the line), and
//! it stays short and printable whatever the file holds (megabyte values,
//! NULs, terminal escapes, deep nesting, bytes that are not UTF-8).

use std::{path::Path, process::Command};

const EXIT_CONFIG: i32 = 64;
/// Longest message accepted, whatever the input's size.
const MAX_MESSAGE: usize = 2048;

#[test]
fn every_hostile_config_is_refused_with_exit_64_naming_the_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus has {} files", files.len());
    for f in &files {
        let bytes = std::fs::read(f).expect("read corpus file");
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let expect = String::from_utf8_lossy(first)
            .strip_prefix("# expect: ")
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: <text>`", f.display()))
            .to_owned();
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["config", "check", "--config"])
            .arg(f)
            .output()
            .expect("tollgate runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        assert_eq!(
            out.status.code(),
            Some(EXIT_CONFIG),
            "{name}: exit 64, got {:?}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains(&expect),
            "{name}: names {expect:?}: {stderr}"
        );
        assert!(
            stderr.len() <= MAX_MESSAGE,
            "{name}: message of {} bytes",
            stderr.len()
        );
        assert!(
            !stderr.contains("panicked")
                && stderr
                    .trim_end()
                    .chars()
                    .all(|c| !c.is_control() || c == '\n'),
            "{name}: printable, no panic: {stderr:?}"
        );
    }
}

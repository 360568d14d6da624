//! Error text for hostile config files: a parse error names the line, the
//! column and the key (`maps.flow_entries`), and quotes the input only
//! escaped (no NULs, newlines or terminal escapes reach the operator's
//! terminal) and cut (a megabyte-long value is not echoed back whole).
#![forbid(unsafe_code)]

/// Longest piece of input quoted in an error message.
const MAX_QUOTE: usize = 120;

/// `s` escaped (Rust debug escapes: `\0`, `\n`, `\u{1b}`) and cut to
/// [`MAX_QUOTE`] characters, with the cut said.
pub fn shown(s: &str) -> String {
    shown_max(s, MAX_QUOTE)
}

/// [`shown`] with a limit of `max` characters.
fn shown_max(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str(&format!("... ({} bytes in all)", s.len()));
            break;
        }
        // Control characters and bidi/zero-width format characters are
        // escaped (they would rewrite the terminal or hide text); quotes
        // and backslashes stay as written, so the message reads naturally.
        if c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A TOML/serde error as "line L, column C, key K: what".
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    // Serde's message lists the expected keys of a table (useful, so a
    // longer limit), and quotes a wrong value (cut).
    let what = shown_max(e.message(), 4 * MAX_QUOTE);
    let Some(span) = e.span() else {
        return what;
    };
    let start = span.start.min(text.len());
    let before = &text.as_bytes()[..start];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    match key_at(text, line) {
        Some(key) => format!(
            "line {line}, column {column}, key `{}`: {what}",
            shown(&key)
        ),
        None => format!("line {line}, column {column}: {what}"),
    }
}

/// The dotted key defined on `line` (1-based): the last `[table]` or
/// `[[array]]` header above it plus the bare key at the line's start; the
/// header alone for a header line. A best effort for messages: quoted keys
/// and inline tables are shown as written.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (n, l) in text.lines().enumerate() {
        let l = l.trim();
        let header = l
            .strip_prefix("[[")
            .and_then(|h| h.split_once("]]"))
            .or_else(|| l.strip_prefix('[').and_then(|h| h.split_once(']')))
            .map(|(h, _)| h.trim().to_owned());
        if n + 1 == line {
            if let Some(h) = header {
                return Some(h);
            }
            let key = l.split_once('=').map(|(k, _)| k.trim())?;
            if key.is_empty() {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            });
        }
        if let Some(h) = header {
            table = h;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::from_bytes(std::path::Path::new("t.toml"), text.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn names_line_column_and_key() {
        let e = err("[agent]\ntick = \"1s\"\n[maps]\nflow_entries = \"x\"\n");
        assert!(
            e.contains("line 4, column 16, key `maps.flow_entries`"),
            "{e}"
        );
        assert!(e.contains("expected u32"), "{e}");
        let e = err("[agent]\nticks = \"1s\"\n");
        assert!(
            e.contains("key `agent.ticks`") && e.contains("unknown field"),
            "{e}"
        );
        let e = err("[nope]\n");
        assert!(e.contains("unknown field `nope`"), "{e}");
    }

    #[test]
    fn hostile_input_is_escaped_and_cut() {
        let huge = "x".repeat(1 << 20);
        let e = err(&format!("[agent]\npin_dir = \"{huge}\"\n"));
        assert!(e.len() < 1000, "{} bytes", e.len());
        assert!(e.contains("agent.pin_dir"), "{e}");
        let e = err("[agent]\ntick = \"1s\0\x1b[31m\"\n");
        assert!(!e.contains('\0') && !e.contains('\x1b'), "{e:?}");
        let e = err(&format!(
            "a = {}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ));
        assert!(e.contains("line 1") && e.len() < 1000, "{e}");
        let e = Config::from_bytes(std::path::Path::new("t.toml"), b"\xff\xfe[agent]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("UTF-8") && e.contains("t.toml"), "{e}");
        let e = err("[agent]\ntick = \"5ms\"\n");
        assert!(e.contains("agent.tick"), "{e}");
    }

    #[test]
    fn shown_escapes_and_cuts() {
        assert_eq!(
            shown("a\nb\0\u{1b}\"q\"\u{202e}"),
            "a\\nb\\0\\u{1b}\"q\"\\u{202e}"
        );
        let s = shown(&"y".repeat(500));
        assert!(s.starts_with(&"y".repeat(MAX_QUOTE)) && s.ends_with("(500 bytes in all)"));
    }
}

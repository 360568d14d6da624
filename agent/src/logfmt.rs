//! One log record per line, whatever the logged values hold. Pod names,
//! cgroup paths and quarantine reasons come from workloads and operators:
//! a newline in one would forge a second record, a terminal escape would
//! rewrite the operator's screen. The formatter writes each event with one
//! write; this writer escapes every control character in it (C0, DEL and
//! the C1 range) except the record's final newline, as `\n`, `\r`,
//! `\x1b`, `\u{9b}`. With colours on (a terminal), ESC is left to the
//! formatter's own colour codes.
#![forbid(unsafe_code)]

use std::io::{self, Write};

/// Wraps the log output; see the module documentation.
pub struct EscapingWriter<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: Write> EscapingWriter<W> {
    /// `keep_esc`: the formatter emits ANSI colours (ESC passes through).
    pub fn new(inner: W, keep_esc: bool) -> Self {
        Self { inner, keep_esc }
    }
}

/// `buf` with its control characters escaped, a final newline kept.
pub fn escape_record(buf: &[u8], keep_esc: bool) -> Vec<u8> {
    let (body, newline) = match buf.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (buf, false),
    };
    let mut out = Vec::with_capacity(buf.len() + 16);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x1b if keep_esc => out.push(b),
            0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            // U+0080..U+009F (C1 controls, e.g. CSI) in UTF-8.
            0xc2 if body.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) => {
                out.extend_from_slice(format!("\\u{{{:x}}}", body[i + 1]).as_bytes());
                i += 1;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    if newline {
        out.push(b'\n');
    }
    out
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&escape_record(buf, self.keep_esc))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_keeps_the_record_newline_and_utf8() {
        let rec = "a\"b\nc\r\u{1b}[2J\u{7}\u{9b}é ok\n";
        let out = String::from_utf8(escape_record(rec.as_bytes(), false)).unwrap();
        assert_eq!(out, "a\"b\\nc\\r\\x1b[2J\\x07\\u{9b}é ok\n");
        assert_eq!(out.lines().count(), 1);
        let colours =
            String::from_utf8(escape_record(b"\x1b[32mINFO\x1b[0m x\ny\n", true)).unwrap();
        assert_eq!(colours, "\u{1b}[32mINFO\u{1b}[0m x\\ny\n");
    }
}

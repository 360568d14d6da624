//! Running `tg-traffic` sinks without start-up races.
//!
//! A sender started before its sink has bound would lose datagrams (or get a
//! RST) and make exact counts flaky. The sinks print `listening <addr>` once
//! bound; [`Sink::start`] returns only after that line, without sleeping.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::cmd::{self, Error, Output, Result};

/// How long a sink may take to bind.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A started sink (`tg-traffic udp-sink`/`tcp-sink`) that is listening.
/// Drop kills it if [`Sink::finish`] was not called.
#[derive(Debug)]
pub struct Sink {
    child: Option<Child>,
    what: String,
    rest: Option<JoinHandle<String>>,
}

impl Sink {
    /// Spawns `cmd` (stdout/stderr piped here) and waits for its
    /// `listening` line.
    pub fn start(mut cmd: Command) -> Result<Sink> {
        let what = cmd::describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("spawning `{what}`"), e))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel();
        // One reader thread: hands over the first line, then collects the
        // rest for `finish` so the pipe never fills.
        let rest = thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
            let _ = tx.send(first);
            lines.map_while(|l| l.ok()).collect::<Vec<_>>().join("\n")
        });
        let mut sink = Sink {
            child: Some(child),
            what,
            rest: Some(rest),
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.starts_with("listening") => Ok(sink),
            Ok(line) => {
                let out = sink.finish(Duration::from_secs(5));
                Err(Error::Invalid(format!(
                    "`{}` did not start listening (first line {line:?}): {out:?}",
                    sink.what
                )))
            }
            Err(_) => Err(Error::Timeout {
                what: format!("`{}` to listen", sink.what),
                after: READY_TIMEOUT,
            }),
        }
    }

    /// Waits for the sink to exit (it stops after its count, `--once`, or
    /// its own timeout) and returns what it printed after `listening`.
    /// A non-zero exit is not an error here: the caller asserts the count.
    pub fn finish(&mut self, timeout: Duration) -> Result<Output> {
        let child = self
            .child
            .take()
            .ok_or_else(|| Error::Invalid(format!("`{}` already finished", self.what)))?;
        let mut out = cmd::wait_timeout(child, timeout, &self.what)?;
        if let Some(rest) = self.rest.take() {
            out.stdout = rest.join().unwrap_or_default();
        }
        Ok(out)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `tg-traffic udp-send` (at `bin`) in `pod`: exactly `count`
/// datagrams of `size` payload bytes to `to`, within `timeout`.
pub fn udp_send(
    pod: &crate::pod::Pod,
    bin: &str,
    to: &str,
    count: u64,
    size: u64,
    timeout: Duration,
) -> Result<Output> {
    let (count, size) = (count.to_string(), size.to_string());
    pod.run(
        &[
            bin, "udp-send", "--to", to, "--count", &count, "--size", &size,
        ],
        timeout,
    )
}

//! A "pod": one test cgroup plus one network namespace, the unit the agent
//! accounts for.
//!
//! cgroup_skb attributes a packet to the cgroup of the socket, which is fixed
//! when the socket is created. So the workload must be in the pod's cgroup
//! before it opens any socket; `spawn` guarantees that by joining the cgroup
//! from a shell that then `exec`s into the namespace and the workload (same
//! pid throughout, no unsafe `pre_exec` needed).

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cgroup::TestCgroup;
use crate::cmd::{self, Error, Output, Result};
use crate::netns::Netns;

/// Joins the cgroup named by $1, then enters netns $2 and execs the rest.
/// Arguments are passed positionally, so nothing is shell-quoted.
const ENTER_SCRIPT: &str =
    r#"cg="$1"; ns="$2"; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#;

/// Field order is drop order: the cgroup goes first, killing anything still
/// running, so the namespace is not kept alive by a straggler.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    /// Pod address; `0.0.0.0` for a pod made by [`Pod::new`] outside a topology.
    pub v4: Ipv4Addr,
    /// Pod address; `::` for a pod made by [`Pod::new`] outside a topology.
    pub v6: Ipv6Addr,
    pub cgroup: TestCgroup,
    pub netns: Netns,
}

impl Pod {
    /// A pod with a cgroup and an isolated namespace (only lo); use
    /// `topology::Topology` for one that is wired to the test network.
    pub fn new(name: &str) -> Result<Pod> {
        Ok(Pod {
            name: name.to_string(),
            v4: Ipv4Addr::UNSPECIFIED,
            v6: Ipv6Addr::UNSPECIFIED,
            cgroup: TestCgroup::new(name)?,
            netns: Netns::new(&format!("tg{name}"))?,
        })
    }

    /// The command that runs `argv` inside this pod, not yet spawned, so the
    /// caller can choose stdio.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", ENTER_SCRIPT, "sh"])
            .arg(self.cgroup.path())
            .arg(self.netns.name())
            .args(argv);
        c
    }

    /// Starts `argv` inside the pod's cgroup and namespace, stdout/stderr
    /// piped (use `cmd::wait_timeout` to collect them).
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> std::io::Result<Child> {
        self.command(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Runs `argv` in the pod to completion within `timeout`; a non-zero
    /// exit is an error that carries stderr.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<Output> {
        let what = format!(
            "{} in pod {}",
            cmd::describe(&self.command(argv)),
            self.name
        );
        let child = self
            .spawn(argv)
            .map_err(|e| Error::io(format!("spawning {what}"), e))?;
        cmd::check(&what, cmd::wait_timeout(child, timeout, &what)?)
    }
}

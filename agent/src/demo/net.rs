//! The demo's network: a router namespace with one veth per "pod"
//! namespace, a cluster service host (198.18.250.2) and an "internet" host
//! (203.0.113.1), built and torn down with `ip`. Nothing touches the
//! host's own namespace, routes or sysctls: forwarding is enabled inside
//! the router namespace only.

use std::process::Command;

use super::DemoError;

pub const PREFIX: &str = "tgdemo-";
const ROUTER: &str = "tgdemo-rt";
pub const SERVICE_ADDR: &str = "198.18.250.2";
pub const INTERNET_ADDR: &str = "203.0.113.1";

/// One namespace behind the router.
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
}

/// Owns every namespace it made; Drop deletes them (their veths go with
/// them).
#[derive(Debug, Default)]
pub struct Network {
    made: Vec<String>,
}

pub fn ip(args: &[&str]) -> Result<(), DemoError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| DemoError::Tool("ip".into(), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DemoError::Tool(
            format!("ip {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Deletes namespaces a killed demo left behind (ours by their prefix).
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.split_whitespace().next()
            && name.starts_with(PREFIX)
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Network {
    pub fn new() -> Result<Self, DemoError> {
        let mut n = Self::default();
        n.netns(ROUTER)?;
        ip(&[
            "netns",
            "exec",
            ROUTER,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        Ok(n)
    }

    fn netns(&mut self, name: &str) -> Result<(), DemoError> {
        ip(&["netns", "add", name])?;
        self.made.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A namespace `name` on subnet `net` (a /24 written "a.b.c"): the
    /// host is `.{host}`, the router `.254`.
    pub fn host(&mut self, name: &str, net: &str, host: u8) -> Result<Host, DemoError> {
        let netns = format!("{PREFIX}{name}");
        self.netns(&netns)?;
        let rt_if = format!("tgd-{name}");
        ip(&[
            "link", "add", &rt_if, "netns", ROUTER, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        let gw = format!("{net}.254");
        let addr = format!("{net}.{host}");
        ip(&[
            "-n",
            ROUTER,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            &rt_if,
        ])?;
        ip(&["-n", ROUTER, "link", "set", &rt_if, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "route", "add", "default", "via", &gw])?;
        Ok(Host { netns })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for n in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", n]) {
                eprintln!("demo cleanup: {e}");
            }
        }
    }
}

//! Network namespaces and veth pairs, driven through iproute2.
//!
//! Each namespace is configured for determinism before any interface
//! exists: no IPv6 DAD (addresses usable at once, no tentative-address
//! drops) and no router solicitations/RAs (no stray packets or routes).

use std::ffi::OsStr;
use std::net::IpAddr;
use std::process::Command;

use crate::cmd::{self, Result};

/// Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
pub const IFNAME_MAX: usize = 15;

/// Sysctls applied to every new namespace. `default` covers interfaces
/// created later, `all` the ones that exist (lo).
const DETERMINISM_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/dad_transmits", "0"),
    ("net/ipv6/conf/default/dad_transmits", "0"),
    ("net/ipv6/conf/all/accept_ra", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
    ("net/ipv6/conf/all/router_solicitations", "0"),
    ("net/ipv6/conf/default/router_solicitations", "0"),
];

/// RAII guard for `ip netns add <prefix>-<pid>-<n>`; Drop runs `ip netns del`.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with lo up and DAD/RS disabled.
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = format!("{prefix}-{}", crate::unique_suffix());
        cmd::run("ip", ["netns", "add", name.as_str()])?;
        // From here on the guard exists, so an error below still cleans up.
        let ns = Netns { name };
        ns.ip(["link", "set", "lo", "up"])?;
        ns.sysctls(DETERMINISM_SYSCTLS)?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> argv...`, not yet spawned: the caller chooses stdio.
    /// Note: `ip netns exec` remounts /sys, so cgroupfs and bpffs are not
    /// visible to the command; enter cgroups before (see `pod::Pod::spawn`).
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name.as_str()]).args(argv);
        c
    }

    /// Runs `argv` inside the namespace to completion (30 s bound); stdout.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        cmd::run_cmd(self.command(argv), std::time::Duration::from_secs(30))
    }

    /// `ip -n <ns> args...`
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["-n", self.name.as_str()]).args(args);
        cmd::run_cmd(c, std::time::Duration::from_secs(30))
    }

    /// Writes `/proc/sys/<key>` = value inside the namespace (keys use `/`,
    /// so interface names with dots stay unambiguous). One process for all
    /// pairs: /proc/sys/net reflects the writer's namespace.
    pub fn sysctls(&self, kv: &[(&str, &str)]) -> Result<()> {
        let script =
            r#"while [ $# -gt 0 ]; do echo "$2" > "/proc/sys/$1" || exit 1; shift 2; done"#;
        let mut argv = vec!["sh", "-c", script, "sh"];
        for (k, v) in kv {
            argv.push(k);
            argv.push(v);
        }
        self.exec(&argv).map(drop)
    }

    /// Names in `ip netns list` (for leak checks).
    pub fn list() -> Result<Vec<String>> {
        let out = cmd::run("ip", ["netns", "list"])?;
        Ok(parse_netns_list(&out))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd::run("ip", ["netns", "del", self.name.as_str()]) {
            eprintln!("warning: cleaning up netns {}: {e}", self.name);
        }
    }
}

/// `ip netns list` prints `name (id: N)` or just `name`, one per line.
fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Where one end of a veth pair lives.
#[derive(Debug, Clone, Copy)]
pub enum Side<'a> {
    /// The namespace the test process runs in; the name must be unique
    /// host-wide (see [`unique_ifname`]).
    Host,
    Ns(&'a Netns),
}

/// One end of a veth pair: where, what it is called, which addresses.
#[derive(Debug, Clone)]
pub struct VethEnd<'a> {
    pub side: Side<'a>,
    pub ifname: String,
    /// (address, prefix length); IPv6 ones are added with `nodad`.
    pub addrs: Vec<(IpAddr, u8)>,
}

impl<'a> VethEnd<'a> {
    pub fn new(side: Side<'a>, ifname: &str, addrs: &[(IpAddr, u8)]) -> Self {
        VethEnd {
            side,
            ifname: ifname.to_string(),
            addrs: addrs.to_vec(),
        }
    }

    fn ns_name(&self) -> Option<&str> {
        match self.side {
            Side::Host => None,
            Side::Ns(ns) => Some(ns.name()),
        }
    }

    /// `ip [-n ns] args...`
    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full: Vec<&str> = Vec::new();
        if let Some(ns) = self.ns_name() {
            full.extend(["-n", ns]);
        }
        full.extend(args);
        cmd::run("ip", full)
    }

    fn configure(&self) -> Result<()> {
        for (addr, prefix) in &self.addrs {
            let cidr = format!("{addr}/{prefix}");
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", self.ifname.as_str()];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            self.ip(&args)?;
        }
        self.ip(&["link", "set", self.ifname.as_str(), "up"])
            .map(drop)
    }
}

/// RAII guard for a veth pair. Drop deletes end A, which removes both ends;
/// if A's namespace is already gone the pair went with it, so errors are
/// ignored.
#[derive(Debug)]
pub struct Veth {
    ns: Option<String>,
    ifname: String,
}

impl Veth {
    /// Creates the pair directly in both target namespaces (no transient
    /// name in the host namespace, so names only need to be unique per
    /// namespace), adds the addresses and brings both ends up.
    pub fn create(a: &VethEnd<'_>, b: &VethEnd<'_>) -> Result<Veth> {
        for end in [a, b] {
            if end.ifname.is_empty() || end.ifname.len() > IFNAME_MAX {
                return Err(cmd::Error::Invalid(format!(
                    "interface name {:?} must be 1..={IFNAME_MAX} bytes",
                    end.ifname
                )));
            }
        }
        let mut args = vec!["link", "add", a.ifname.as_str()];
        if let Some(ns) = a.ns_name() {
            args.extend(["netns", ns]);
        }
        args.extend(["type", "veth", "peer", "name", b.ifname.as_str()]);
        if let Some(ns) = b.ns_name() {
            args.extend(["netns", ns]);
        }
        cmd::run("ip", args)?;
        let veth = Veth {
            ns: a.ns_name().map(str::to_string),
            ifname: a.ifname.clone(),
        };
        a.configure()?;
        b.configure()?;
        Ok(veth)
    }

    /// Name of end A (the one Drop deletes).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let mut args = Vec::new();
        if let Some(ns) = &self.ns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(["link", "del", self.ifname.as_str()]);
        // Errors mean the link (or its namespace) is already gone.
        let _ = cmd::run("ip", args);
    }
}

/// A host-namespace interface name `<prefix><pid base36>x<n>` that is unique
/// across test threads and processes and fits IFNAMSIZ.
pub fn unique_ifname(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{}", base36(std::process::id()), base36(n));
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name} longer than {IFNAME_MAX}: use a shorter prefix"
    );
    name
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_list_takes_first_token() {
        let out = "tgp-1-2 (id: 3)\nplain\n\n";
        assert_eq!(parse_netns_list(out), vec!["tgp-1-2", "plain"]);
    }

    #[test]
    fn host_ifnames_fit_and_differ() {
        let a = unique_ifname("tg");
        let b = unique_ifname("tg");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX);
        // pid_max is at most 2^22, which is 5 base-36 digits.
        assert_eq!(base36(4_194_304), "2hwcg");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(0), "0");
    }
}

//! `tg-traffic`: a tiny, deterministic traffic tool for Tollgate's
//! privileged tests, run inside test pods and peer namespaces.
//!
//! Unlike iperf3 it sends exactly what it is told (K datagrams of S bytes
//! from one socket), so UDP byte/packet counts are known in advance, and
//! every command is bounded in time. Sinks print `listening <addr>` once
//! bound (the harness waits for it) and their count as the last line.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

/// Upper bound for any user-given duration, so a typo cannot hang CI.
const MAX_SECONDS: u64 = 600;

#[derive(Parser, Debug)]
#[command(
    name = "tg-traffic",
    about = "Deterministic traffic for Tollgate tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send exactly COUNT datagrams of SIZE payload bytes from one unconnected socket.
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
        /// Send COUNT datagrams to each of PORTS consecutive ports starting
        /// at the port of --to (nobody needs to listen: many new peers).
        #[arg(long, default_value_t = 1)]
        ports: u16,
        /// Pseudo-random payload, new per datagram, whose first byte looks
        /// like a QUIC long header (0b11xx_xxxx): encrypted-looking traffic.
        #[arg(long)]
        random: bool,
    },
    /// Receive until COUNT datagrams or the timeout; print the count.
    UdpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
    },
    /// Connect, write exactly BYTES, shut down writing, read until EOF.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
    /// Accept, read to EOF, print bytes received, close (repeat unless --once).
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        once: bool,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
    /// Write continuously for SECONDS (at most), then close; print bytes written.
    TcpStream {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: u64,
    },
    /// Just connect; errors ("refused", a deny's EPERM) are printed and ignored.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Short-lived pods: move this process into each cgroup directory
    /// listed in FILE (one per line, at most 100,000), send one datagram of
    /// SIZE bytes to TO from a new socket there, and go on; print the
    /// number of cgroups visited. The process ends in the last cgroup.
    Hop {
        #[arg(long)]
        cgroups: std::path::PathBuf,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Proto {
    Tcp,
    Udp,
}

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tg-traffic: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::UdpSend {
            to,
            count,
            size,
            interval_ms,
            timeout_s,
            ports,
            random,
        } => udp_send(
            to,
            count,
            size,
            Duration::from_millis(interval_ms),
            secs(timeout_s),
            ports,
            random,
        ),
        Cmd::UdpSink {
            listen,
            count,
            timeout_s,
        } => udp_sink(listen, count, secs(timeout_s)),
        Cmd::TcpSend {
            to,
            bytes,
            timeout_s,
        } => tcp_send(to, bytes, secs(timeout_s)),
        Cmd::TcpSink {
            listen,
            once,
            timeout_s,
        } => tcp_sink(listen, once, secs(timeout_s)),
        Cmd::TcpStream { to, seconds } => tcp_stream(to, secs(seconds)),
        Cmd::Connect {
            to,
            proto,
            timeout_s,
        } => connect(to, proto, secs(timeout_s)),
        Cmd::Hop { cgroups, to, size } => hop(&cgroups, to, size),
    }
}

fn hop(list: &std::path::Path, to: SocketAddr, size: usize) -> Result<()> {
    let text = ctx("reading the cgroup list", std::fs::read_to_string(list))?;
    let pid = std::process::id().to_string();
    let data = payload(size);
    let mut n = 0u64;
    for dir in text.lines().filter(|l| !l.is_empty()).take(100_000) {
        let procs = std::path::Path::new(dir).join("cgroup.procs");
        ctx(dir, std::fs::write(&procs, &pid))?;
        let s = ctx("bind", UdpSocket::bind(any_for(to)))?;
        ctx("send", s.send_to(&data, to))?;
        n += 1;
    }
    say(n);
    Ok(())
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s.clamp(1, MAX_SECONDS))
}

/// The wildcard address of `to`'s family, port 0.
fn any_for(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Deterministic, non-zero payload (no reliance on compression or zeros).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

fn ctx<T>(what: &str, r: io::Result<T>) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Prints a line and flushes: the harness reads stdout through a pipe.
fn say(line: impl std::fmt::Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn udp_send(
    to: SocketAddr,
    count: u64,
    size: usize,
    interval: Duration,
    timeout: Duration,
    ports: u16,
    random: bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let sock = ctx("bind", UdpSocket::bind(any_for(to)))?;
    let mut buf = payload(size);
    let mut x = 0x853c_49e6_748f_ea9bu64;
    let targets: Vec<SocketAddr> = (0..ports.max(1))
        .map(|i| SocketAddr::new(to.ip(), to.port().wrapping_add(i)))
        .collect();
    for i in 0..count * targets.len() as u64 {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {i} datagrams"));
        }
        let to = targets[(i % targets.len() as u64) as usize];
        if random {
            fill_random(&mut buf, &mut x);
        }
        let n = ctx(
            &format!("send_to {to} (datagram {i})"),
            sock.send_to(&buf, to),
        )?;
        if n != size {
            return Err(format!("datagram {i}: sent {n} of {size} bytes"));
        }
        if !interval.is_zero() && i + 1 < count * targets.len() as u64 {
            thread::sleep(interval);
        }
    }
    say(format!("sent {}", count * targets.len() as u64));
    Ok(())
}

/// xorshift64 bytes (sizes are exact either way; the content only has to
/// look encrypted), first byte 0b11xx_xxxx like a QUIC long header.
fn fill_random(buf: &mut [u8], x: &mut u64) {
    for b in buf.iter_mut() {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *b = (*x >> 32) as u8;
    }
    if let Some(first) = buf.first_mut() {
        *first |= 0xc0;
    }
}

fn udp_sink(listen: SocketAddr, count: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let sock = ctx("bind", UdpSocket::bind(listen))?;
    say(format!(
        "listening {}",
        ctx("local_addr", sock.local_addr())?
    ));
    let mut buf = vec![0u8; 65536];
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        ctx("set_read_timeout", sock.set_read_timeout(Some(left)))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                got += 1;
                bytes += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(format!("recv_from: {e}")),
        }
    }
    eprintln!("udp-sink: {got} datagrams, {bytes} payload bytes");
    say(got);
    if got == count {
        Ok(())
    } else {
        Err(format!("received {got} of {count} datagrams"))
    }
}

fn tcp_send(to: SocketAddr, bytes: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut s = ctx(
        &format!("connect {to}"),
        TcpStream::connect_timeout(&to, timeout),
    )?;
    let chunk = payload(64 * 1024);
    let mut left = bytes;
    while left > 0 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!("timed out with {left} of {bytes} bytes unsent"));
        }
        ctx("set_write_timeout", s.set_write_timeout(Some(remaining)))?;
        let n = left.min(chunk.len() as u64) as usize;
        ctx("write", s.write_all(&chunk[..n]))?;
        left -= n as u64;
    }
    ctx("shutdown", s.shutdown(Shutdown::Write))?;
    // Wait for the peer's close so every byte was delivered and acked
    // before we exit (and before a test reads counters).
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    ctx("set_read_timeout", s.set_read_timeout(Some(remaining)))?;
    let mut sink = Vec::new();
    ctx("read until EOF", s.read_to_end(&mut sink))?;
    say(format!("sent {bytes}"));
    Ok(())
}

fn tcp_sink(listen: SocketAddr, once: bool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let l = ctx("bind", TcpListener::bind(listen))?;
    say(format!("listening {}", ctx("local_addr", l.local_addr())?));
    // Non-blocking accept polled against the deadline: std has no accept timeout.
    ctx("set_nonblocking", l.set_nonblocking(true))?;
    loop {
        if Instant::now() >= deadline {
            return if once {
                Err("timed out waiting for a connection".into())
            } else {
                Ok(())
            };
        }
        let mut s = match l.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(format!("accept: {e}")),
        };
        ctx("set_nonblocking", s.set_nonblocking(false))?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        ctx("set_read_timeout", s.set_read_timeout(Some(left)))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read after {total} bytes: {e}")),
            }
        }
        say(total);
        drop(s);
        if once {
            return Ok(());
        }
    }
}

fn tcp_stream(to: SocketAddr, seconds: Duration) -> Result<()> {
    let deadline = Instant::now() + seconds;
    let mut s = ctx(
        &format!("connect {to}"),
        TcpStream::connect_timeout(&to, seconds),
    )?;
    // Short write timeout so a stalled peer cannot hold us past the deadline.
    ctx(
        "set_write_timeout",
        s.set_write_timeout(Some(Duration::from_millis(200))),
    )?;
    let chunk = payload(64 * 1024);
    let mut total = 0u64;
    while Instant::now() < deadline {
        match s.write(&chunk) {
            Ok(n) => total += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("write after {total} bytes: {e}")),
        }
    }
    // Graceful close: half-close, then wait for the peer's FIN on this
    // (full) socket. Closing with the FIN still to come would orphan the
    // socket, and the kernel would answer that FIN from a TIME_WAIT
    // mini-socket owned by the netns, not by the pod's cgroup.
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut sink = [0u8; 4096];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    say(format!("sent {total}"));
    Ok(())
}

fn connect(to: SocketAddr, proto: Proto, timeout: Duration) -> Result<()> {
    match proto {
        Proto::Tcp => match TcpStream::connect_timeout(&to, timeout) {
            Ok(_) => say(format!("connected {to}")),
            // The point is the connect() call (sock_addr hooks), not the peer.
            Err(e) => say(format!("connect {to}: {e} (ignored)")),
        },
        Proto::Udp => {
            let sock = ctx("bind", UdpSocket::bind(any_for(to)))?;
            match sock.connect(to) {
                Ok(()) => say(format!("connected {to}")),
                Err(e) => say(format!("connect {to}: {e} (ignored)")),
            }
        }
    }
    Ok(())
}

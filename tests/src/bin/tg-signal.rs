//! `tg-signal`: DNS and stratum traffic for Tollgate's privileged tests
//! and `cargo xtask eval`, run inside test pods and peer namespaces.
//!
//! `dns` sends exactly the queries it is told (one UDP datagram each, no
//! retries). `stratum-client` speaks the client side of stratum v1
//! (subscribe, authorize, then shares); `stratum-pool` is a minimal pool
//! that answers every request and hands out one job. Both speak stratum
//! over TLS too (`--tls-ca` / `--tls-cert`, `--tls-key`): a miner hiding
//! its protocol on port 443, where only sizes and timing remain visible.
//! Every command is bounded in time.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

// A directory without main.rs, so not a target of its own.
#[path = "tg-signal/tls.rs"]
mod tls;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tls::{Stream, client_config, server_config};

use clap::{Parser, Subcommand};

/// Upper bound for any user-given duration, so a typo cannot hang CI.
const MAX_SECONDS: u64 = 3600;

#[derive(Parser, Debug)]
#[command(
    name = "tg-signal",
    about = "DNS and stratum traffic for Tollgate tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send one DNS query (UDP) per name; names are NAME, or PREFIX0.SUFFIX,
    /// PREFIX1.SUFFIX, ... when --count is given.
    Dns {
        #[arg(long)]
        to: SocketAddr,
        /// Explicit names (comma-separated).
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        /// Generate COUNT names PREFIX<i>.SUFFIX instead.
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[arg(long, default_value = "q")]
        prefix: String,
        #[arg(long, default_value = "example.internal")]
        suffix: String,
        /// Query type (1 A, 16 TXT, 28 AAAA).
        #[arg(long, default_value_t = 1)]
        qtype: u16,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// With --count: PREFIX is replaced by LEN pseudo-random base32
        /// characters per name (a tunnel's encoded payload).
        #[arg(long, default_value_t = 0)]
        random_len: usize,
    },
    /// Stratum v1 client: subscribe, authorize, then SHARES shares, one
    /// every INTERVAL_MS of busy CPU. With --no-wait it writes subscribe,
    /// authorize and the shares without reading answers (for exact packet
    /// counts against a plain TCP sink). Prints `first-share <unix ms>`.
    StratumClient {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        shares: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
        /// Write each message as two TCP segments, split after this many
        /// bytes (0: whole), 20 ms apart.
        #[arg(long, default_value_t = 0)]
        split_at: usize,
        /// With --split-at: split only the first message (subscribe).
        #[arg(long)]
        split_first_only: bool,
        /// Speak TLS, trusting this PEM CA (the pool's certificate must
        /// name the address of --to).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
    /// Minimal stratum pool: answers every request line with a result,
    /// sends one mining.notify after authorize; counts requests by method.
    StratumPool {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
        /// Serve TLS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tg-signal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s.clamp(1, MAX_SECONDS))
}

fn ctx<T>(what: &str, r: io::Result<T>) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn say(line: impl std::fmt::Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Dns {
            to,
            names,
            count,
            prefix,
            suffix,
            qtype,
            interval_ms,
            random_len,
        } => {
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let mut label = |i: u64| -> String {
                if random_len == 0 {
                    return format!("{prefix}{i}");
                }
                (0..random_len.min(63))
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        b"abcdefghijklmnopqrstuvwxyz234567"[(x % 32) as usize] as char
                    })
                    .collect()
            };
            let names = if count > 0 {
                (0..count)
                    .map(|i| format!("{}.{suffix}", label(i)))
                    .collect()
            } else {
                names
            };
            dns(to, &names, qtype, Duration::from_millis(interval_ms))
        }
        Cmd::StratumClient {
            to,
            shares,
            interval_ms,
            no_wait,
            timeout_s,
            split_at,
            split_first_only,
            tls_ca,
        } => stratum_client(
            to,
            shares,
            Duration::from_millis(interval_ms),
            no_wait,
            secs(timeout_s),
            Split {
                at: split_at,
                first_only: split_first_only,
            },
            tls_ca.as_deref(),
        ),
        Cmd::StratumPool {
            listen,
            timeout_s,
            tls_cert,
            tls_key,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => Some(server_config(&c, &k)?),
                _ => None,
            };
            stratum_pool(listen, secs(timeout_s), tls)
        }
    }
}

/// A standard query (RD set) for `name` in wire format.
fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("bad label {label:?} in {name:?}: 1 to 63 bytes"));
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    Ok(m)
}

fn dns(to: SocketAddr, names: &[String], qtype: u16, interval: Duration) -> Result<()> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = ctx("bind", UdpSocket::bind(any))?;
    for (i, name) in names.iter().enumerate() {
        let q = query(i as u16, name, qtype)?;
        let n = ctx(&format!("send_to {to}"), sock.send_to(&q, to))?;
        if n != q.len() {
            return Err(format!("query {i}: sent {n} of {} bytes", q.len()));
        }
        if !interval.is_zero() {
            thread::sleep(interval);
        }
    }
    say(format!("sent {}", names.len()));
    Ok(())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Busy CPU for `d` (what a miner does between shares).
fn burn(d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while Instant::now() < end {
        for _ in 0..10_000 {
            x = x.rotate_left(5) ^ x.wrapping_mul(0x100_0000_01b3);
        }
    }
    x
}

/// How the stratum client cuts its messages into segments.
struct Split {
    at: usize,
    first_only: bool,
}

fn stratum_client(
    to: SocketAddr,
    shares: u64,
    interval: Duration,
    no_wait: bool,
    timeout: Duration,
    split: Split,
    tls_ca: Option<&Path>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let s = ctx(
        &format!("connect {to}"),
        TcpStream::connect_timeout(&to, timeout),
    )?;
    ctx("nodelay", s.set_nodelay(true))?;
    ctx("read timeout", s.set_read_timeout(Some(timeout)))?;
    let stream = match tls_ca {
        None => Stream::Plain(s),
        Some(ca) => {
            let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
            let conn = rustls::ClientConnection::new(client_config(ca)?, name)
                .map_err(|e| format!("TLS to {to}: {e}"))?;
            let mut tls = rustls::StreamOwned::new(conn, s);
            // Handshake now, so a bad certificate fails here, by name.
            while tls.conn.is_handshaking() {
                ctx(
                    &format!("TLS handshake with {to}"),
                    tls.conn.complete_io(&mut tls.sock),
                )?;
            }
            Stream::Client(Box::new(tls))
        }
    };
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut sent = 0usize;
    let mut send = |r: &mut BufReader<Stream>, msg: String| -> Result<()> {
        let cut = split.at > 0 && split.at < msg.len() && (!split.first_only || sent == 0);
        sent += 1;
        let w = r.get_mut();
        if cut {
            // Two segments (nodelay), the first ending inside the message.
            ctx("write", w.write_all(&msg.as_bytes()[..split.at]))?;
            ctx("flush", w.flush())?;
            thread::sleep(Duration::from_millis(20));
            ctx("write", w.write_all(&msg.as_bytes()[split.at..]))?;
        } else {
            ctx("write", w.write_all(msg.as_bytes()))?;
        }
        ctx("flush", w.flush())?;
        // Separate segments, as real clients write one request at a time.
        thread::sleep(Duration::from_millis(20));
        Ok(())
    };
    let mut read = |r: &mut BufReader<Stream>| -> Result<()> {
        if no_wait {
            return Ok(());
        }
        line.clear();
        ctx("read answer", r.read_line(&mut line)).map(|_| ())
    };
    send(
        &mut r,
        "{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"tg-signal/1.0\"]}\n".into(),
    )?;
    read(&mut r)?;
    send(
        &mut r,
        "{\"params\": [\"tollgate.test\", \"x\"], \"id\": 2, \"method\": \"mining.authorize\"}\n"
            .into(),
    )?;
    read(&mut r)?;
    for i in 0..shares {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {i} shares"));
        }
        let nonce = burn(interval);
        if i == 0 {
            say(format!("first-share {}", unix_ms()));
        }
        send(
            &mut r,
            format!(
                "{{\"params\": [\"tollgate.test\", \"job1\", \"00000000\", \"5f5e1000\", \"{:08x}\"], \"id\": {}, \"method\": \"mining.submit\"}}\n",
                nonce as u32,
                3 + i
            ),
        )?;
        read(&mut r)?;
    }
    ctx("shutdown", r.get_mut().shutdown_write())?;
    // Wait for the peer's close (see tg-traffic tcp-stream).
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    r.get_mut().wait_tcp_eof();
    say(format!("shares {shares}"));
    Ok(())
}

fn stratum_pool(
    listen: SocketAddr,
    timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let l = ctx("bind", TcpListener::bind(listen))?;
    say(format!("listening {}", ctx("local_addr", l.local_addr())?));
    ctx("set_nonblocking", l.set_nonblocking(true))?;
    let mut workers = Vec::new();
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let tls = tls.clone();
                workers.push(thread::spawn(move || serve(s, left, tls)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    let mut requests = 0;
    for w in workers {
        requests += w.join().unwrap_or(0);
    }
    say(format!("requests {requests}"));
    Ok(())
}

/// Answers one miner until it closes; returns the number of requests.
fn serve(s: TcpStream, left: Duration, tls: Option<Arc<rustls::ServerConfig>>) -> u64 {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
    let stream = match tls {
        None => Stream::Plain(s),
        Some(cfg) => match rustls::ServerConnection::new(cfg) {
            Ok(conn) => Stream::Server(Box::new(rustls::StreamOwned::new(conn, s))),
            Err(e) => {
                eprintln!("tg-signal: TLS session: {e}");
                return 0;
            }
        },
    };
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        n += 1;
        let id = line
            .split("\"id\":")
            .nth(1)
            .and_then(|t| t.trim_start().split([',', '}']).next())
            .unwrap_or("null")
            .trim()
            .to_owned();
        let mut answer = format!("{{\"id\":{id},\"result\":true,\"error\":null}}\n");
        if line.contains("mining.authorize") {
            answer.push_str("{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"job1\",\"00\",\"01\",\"02\",[],\"20000000\",\"1d00ffff\",\"5f5e1000\",true]}\n");
        }
        if r.get_mut().write_all(answer.as_bytes()).is_err() || r.get_mut().flush().is_err() {
            break;
        }
    }
    // Our close after theirs (TLS close_notify, then FIN): the miner sees
    // a clean end of stream.
    let _ = r.get_mut().shutdown_write();
    n
}

//! The demo's workloads and servers (`tollgate demo-worker ...`), run as
//! processes inside the demo's namespaces and cgroups. Plain blocking
//! sockets; every loop is bounded by `--seconds`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

/// Ports of the demo's servers.
pub const DATASET_PORT: u16 = 9000;
pub const METRICS_PORT: u16 = 9091;
pub const PACKAGES_PORT: u16 = 8080;
pub const UPLOAD_PORT: u16 = 443;
pub const POOL_PORT: u16 = 3333;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Role {
    /// Servers of the service or internet host: dataset and packages
    /// (send --bytes per connection), metrics and upload sinks, a stratum
    /// pool stub.
    Serve {
        #[arg(long, default_value_t = 262_144)]
        bytes: usize,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Training job: every second, fetch a dataset shard from the service
    /// host and push a few hundred bytes of metrics.
    Train {
        #[arg(long)]
        svc: String,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Notebook: a package-install burst from the internet host every few
    /// seconds, idle in between.
    Notebook {
        #[arg(long)]
        inet: String,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Exfiltration: upload --bytes to --to at about --rate bytes/s,
    /// retrying every second when the connection is refused.
    Upload {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 8_000_000)]
        rate: u64,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Stratum miner: subscribe, authorize, then submit a share every two
    /// seconds, burning some CPU in between.
    Stratum {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

fn bounded(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds.clamp(1, 3600))
}

pub fn run(role: Role) -> std::io::Result<()> {
    match role {
        Role::Serve { bytes, seconds } => serve(bytes, seconds),
        Role::Train { svc, seconds } => train(&svc, seconds),
        Role::Notebook { inet, seconds } => notebook(&inet, seconds),
        Role::Upload {
            to,
            bytes,
            rate,
            seconds,
        } => upload(to, bytes, rate, seconds),
        Role::Stratum { to, seconds } => stratum(to, seconds),
    }
}

fn serve(bytes: usize, seconds: u64) -> std::io::Result<()> {
    let end = bounded(seconds);
    let mut threads = Vec::new();
    for port in [
        DATASET_PORT,
        METRICS_PORT,
        PACKAGES_PORT,
        UPLOAD_PORT,
        POOL_PORT,
    ] {
        let l = TcpListener::bind(("0.0.0.0", port))?;
        threads.push(thread::spawn(move || {
            for c in l.incoming().flatten() {
                thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = match port {
                        DATASET_PORT | PACKAGES_PORT => send_bytes(c, bytes),
                        POOL_PORT => pool(c),
                        _ => drain(c),
                    };
                });
            }
        }));
    }
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn send_bytes(mut c: TcpStream, n: usize) -> std::io::Result<()> {
    c.write_all(&vec![0x5a; n])?;
    c.shutdown(std::net::Shutdown::Write)?;
    drain(c)
}

fn drain(mut c: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 65536];
    while c.read(&mut buf)? > 0 {}
    Ok(())
}

/// Answers every JSON-RPC line with a success, like a pool.
fn pool(c: TcpStream) -> std::io::Result<()> {
    let mut w = c.try_clone()?;
    for line in BufReader::new(c).lines() {
        let line = line?;
        let id = line
            .split("\"id\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .unwrap_or("null")
            .trim()
            .to_owned();
        writeln!(w, "{{\"id\":{id},\"result\":true,\"error\":null}}")?;
    }
    Ok(())
}

fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&to, Duration::from_secs(2))
}

fn addr(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    format!("{host}:{port}")
        .parse()
        .map_err(|e| std::io::Error::other(format!("{host}: {e}")))
}

fn train(svc: &str, seconds: u64) -> std::io::Result<()> {
    let end = bounded(seconds);
    let (data, metrics) = (addr(svc, DATASET_PORT)?, addr(svc, METRICS_PORT)?);
    while Instant::now() < end {
        if let Ok(c) = connect(data) {
            let _ = c.shutdown(std::net::Shutdown::Write);
            let _ = drain(c);
        }
        if let Ok(mut c) = connect(metrics) {
            let _ = c.write_all(format!("loss {:.4}\n", 0.5).repeat(24).as_bytes());
            let _ = c.shutdown(std::net::Shutdown::Write);
            let _ = drain(c);
        }
        thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

fn notebook(inet: &str, seconds: u64) -> std::io::Result<()> {
    let end = bounded(seconds);
    let pkgs = addr(inet, PACKAGES_PORT)?;
    let mut i = 0u64;
    while Instant::now() < end {
        if i.is_multiple_of(4) {
            // pip install: a few downloads in a row.
            for _ in 0..3 {
                if let Ok(mut c) = connect(pkgs) {
                    let _ = c.write_all(b"GET /simple/numpy/ HTTP/1.0\r\n\r\n");
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    let _ = drain(c);
                }
            }
        }
        i += 1;
        thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

fn upload(to: SocketAddr, bytes: u64, rate: u64, seconds: u64) -> std::io::Result<()> {
    let end = bounded(seconds);
    let chunk = vec![0x42u8; 65536];
    let mut sent = 0u64;
    while sent < bytes && Instant::now() < end {
        let mut c = match connect(to) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("upload: connect {to}: {e}");
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
        let start = Instant::now();
        let mut here = 0u64;
        while sent < bytes && Instant::now() < end {
            if let Err(e) = c.write_all(&chunk) {
                eprintln!("upload: write: {e}");
                break;
            }
            sent += chunk.len() as u64;
            here += chunk.len() as u64;
            // Pace to `rate`.
            let due = Duration::from_secs_f64(here as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn stratum(to: SocketAddr, seconds: u64) -> std::io::Result<()> {
    let end = bounded(seconds);
    while Instant::now() < end {
        let mut c = match connect(to) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("stratum: connect {to}: {e}");
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut r = BufReader::new(c.try_clone()?);
        let mut line = String::new();
        let mut rpc = |c: &mut TcpStream, msg: String| -> std::io::Result<()> {
            c.write_all(msg.as_bytes())?;
            line.clear();
            r.read_line(&mut line).map(drop)
        };
        let hello = rpc(
            &mut c,
            "{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"demo/1.0\"]}\n".into(),
        )
        .and_then(|()| {
            rpc(
                &mut c,
                "{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"wallet.worker\",\"x\"]}\n"
                    .into(),
            )
        });
        if hello.is_err() {
            thread::sleep(Duration::from_secs(1));
            continue;
        }
        let mut id = 3u64;
        while Instant::now() < end {
            // "Hashing": half a second of CPU per share.
            let busy = Instant::now();
            let mut x = 0u64;
            while busy.elapsed() < Duration::from_millis(500) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let msg = format!(
                "{{\"id\":{id},\"method\":\"mining.submit\",\"params\":[\"wallet.worker\",\"job\",\"{x:016x}\"]}}\n"
            );
            if rpc(&mut c, msg).is_err() {
                break;
            }
            id += 1;
            thread::sleep(Duration::from_millis(1500));
        }
    }
    Ok(())
}

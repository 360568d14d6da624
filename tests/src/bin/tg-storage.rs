//! `tg-storage`: exact file I/O through one syscall family, for Tollgate's
//! storage tests and benchmark. Writes or reads exactly BYTES in calls of
//! at most CHUNK bytes and prints the number of bytes moved and the number
//! of calls with a positive result, so the test knows what the kernel
//! programs must have counted.
#![deny(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rustix::io::{self as rio, ReadWriteFlags};

#[derive(Parser, Debug)]
#[command(name = "tg-storage", about = "Exact file I/O for Tollgate tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Family {
    Write,
    Pwrite64,
    Writev,
    Pwritev,
    Pwritev2,
    Read,
    Pread64,
    Readv,
    Preadv,
    Preadv2,
    /// copy_file_range(FROM -> PATH)
    CopyFileRange,
    /// sendfile(out PATH, in FROM)
    Sendfile,
    /// splice(FROM -> pipe) then splice(pipe -> PATH)
    Splice,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Move exactly BYTES with one family. Write families create/truncate
    /// PATH; read families read PATH (which must hold BYTES); the copy
    /// families copy FROM into PATH.
    Io {
        #[arg(long, value_enum)]
        family: Family,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 4096)]
        chunk: usize,
        /// Open this many extra fds (copies of a /dev/null fd) first, so
        /// the files used lie beyond the fd table embedded in the
        /// kernel's files_struct (64 fds).
        #[arg(long, default_value_t = 0)]
        hold_fds: usize,
    },
    /// COUNT write() calls of SIZE bytes to PATH (opened once, appending
    /// from the start), timed: prints nanoseconds per call. PATH `-`:
    /// getppid() calls instead (a syscall that does no I/O).
    Loop {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        size: usize,
    },
}

/// Set in the copy of itself `tg-storage io` runs (see [`main`]).
const SPAWNED: &str = "TG_STORAGE_SPAWNED";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A process's fd table is sized at fork by the highest fd open in its
    // parent and keeps that size across exec; a test harness passes
    // high-numbered fds. So the I/O is done by a copy of this tool
    // spawned after closing those: its table is the small one embedded in
    // the kernel's files_struct, as in a container (`--hold-fds` gives it
    // a large one).
    if matches!(cli.cmd, Cmd::Io { .. }) && std::env::var_os(SPAWNED).is_none() {
        return respawn();
    }
    match run(cli.cmd) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tg-storage: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs this tool again with the same arguments, passing on no fd but
/// stdin, stdout and stderr; its exit status.
fn respawn() -> ExitCode {
    if let Err(e) = close_inherited() {
        eprintln!("tg-storage: closing inherited fds: {e}");
        return ExitCode::FAILURE;
    }
    let status = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(SPAWNED, "1")
            .stdin(std::process::Stdio::null())
            .status()
    });
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("tg-storage: the I/O process ended with {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tg-storage: spawning the I/O process: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Closes every fd above stderr, all inherited (a harness's
/// high-numbered pipe, say): they would size the spawned copy's fd table,
/// which is copied at fork before close-on-exec applies.
#[allow(unsafe_code)]
fn close_inherited() -> std::io::Result<()> {
    // SAFETY: called before this process opens anything: no File or other
    // owner in it holds an fd above 2, so none is left dangling.
    let r = unsafe { libc::close_range(3, u32::MAX, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

type Result<T> = std::result::Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn run(cmd: Cmd) -> Result<String> {
    match cmd {
        Cmd::Io {
            family,
            path,
            from,
            bytes,
            chunk,
            hold_fds,
        } => {
            let null = File::open("/dev/null").map_err(err("open /dev/null"))?;
            let _held = (0..hold_fds)
                .map(|_| null.try_clone())
                .collect::<std::io::Result<Vec<File>>>()
                .map_err(err("holding fds"))?;
            let (moved, calls) = io(family, &path, from.as_deref(), bytes, chunk.max(1))?;
            if moved != bytes {
                return Err(format!("moved {moved} of {bytes} bytes"));
            }
            Ok(format!("{moved} {calls}"))
        }
        Cmd::Loop { path, count, size } => {
            if path.as_os_str() == "-" {
                let t = std::time::Instant::now();
                for _ in 0..count {
                    std::hint::black_box(rustix::process::getppid());
                }
                let ns = t.elapsed().as_nanos() as f64 / count.max(1) as f64;
                return Ok(format!("{ns:.1}"));
            }
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(err("open"))?;
            let buf = vec![b'x'; size];
            let t = std::time::Instant::now();
            for _ in 0..count {
                rio::write(&f, &buf).map_err(err("write"))?;
            }
            let ns = t.elapsed().as_nanos() as f64 / count.max(1) as f64;
            Ok(format!("{ns:.1}"))
        }
    }
}

/// Returns (bytes moved, calls with a positive result).
fn io(
    family: Family,
    path: &std::path::Path,
    from: Option<&std::path::Path>,
    bytes: u64,
    chunk: usize,
) -> Result<(u64, u64)> {
    use Family::*;
    let writing = matches!(
        family,
        Write | Pwrite64 | Writev | Pwritev | Pwritev2 | CopyFileRange | Sendfile | Splice
    );
    let file: File = if writing {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(err("open for writing"))?
    } else {
        File::open(path).map_err(err("open for reading"))?
    };
    let src = match (family, from) {
        (CopyFileRange | Sendfile | Splice, Some(f)) => {
            Some(File::open(f).map_err(err("open FROM"))?)
        }
        (CopyFileRange | Sendfile | Splice, None) => return Err("--from is needed".into()),
        _ => None,
    };
    let data = vec![b'd'; chunk];
    let mut buf = vec![0u8; chunk];
    let (mut done, mut calls) = (0u64, 0u64);
    let pipe = if family == Splice {
        Some(rustix::pipe::pipe().map_err(err("pipe"))?)
    } else {
        None
    };
    while done < bytes {
        let n = (bytes - done).min(chunk as u64) as usize;
        let half = n / 2;
        let r = match family {
            Write => rio::write(&file, &data[..n]),
            Pwrite64 => rio::pwrite(&file, &data[..n], done),
            Writev => rio::writev(
                &file,
                &[IoSlice::new(&data[..half]), IoSlice::new(&data[half..n])],
            ),
            Pwritev => rio::pwritev(
                &file,
                &[IoSlice::new(&data[..half]), IoSlice::new(&data[half..n])],
                done,
            ),
            Pwritev2 => rio::pwritev2(
                &file,
                &[IoSlice::new(&data[..half]), IoSlice::new(&data[half..n])],
                done,
                ReadWriteFlags::empty(),
            ),
            Read => rio::read(&file, &mut buf[..n]),
            Pread64 => rio::pread(&file, &mut buf[..n], done),
            Readv => {
                let (a, b) = buf[..n].split_at_mut(half);
                rio::readv(&file, &mut [IoSliceMut::new(a), IoSliceMut::new(b)])
            }
            Preadv => {
                let (a, b) = buf[..n].split_at_mut(half);
                rio::preadv(&file, &mut [IoSliceMut::new(a), IoSliceMut::new(b)], done)
            }
            Preadv2 => {
                let (a, b) = buf[..n].split_at_mut(half);
                rio::preadv2(
                    &file,
                    &mut [IoSliceMut::new(a), IoSliceMut::new(b)],
                    done,
                    ReadWriteFlags::empty(),
                )
            }
            CopyFileRange => rustix::fs::copy_file_range(
                src.as_ref().expect("checked").as_fd(),
                None,
                &file,
                None,
                n,
            ),
            Sendfile => rustix::fs::sendfile(&file, src.as_ref().expect("checked"), None, n),
            Splice => {
                // FROM -> pipe, then pipe -> PATH: one call each side.
                let (rd, wr) = pipe.as_ref().expect("made above");
                let got = rustix::pipe::splice(
                    src.as_ref().expect("checked"),
                    None,
                    wr,
                    None,
                    n,
                    rustix::pipe::SpliceFlags::empty(),
                )
                .map_err(err("splice in"))?;
                let mut left = got;
                let mut out = 0;
                while left > 0 {
                    let k = rustix::pipe::splice(
                        rd,
                        None,
                        &file,
                        None,
                        left,
                        rustix::pipe::SpliceFlags::empty(),
                    )
                    .map_err(err("splice out"))?;
                    if k == 0 {
                        return Err("splice out moved nothing".into());
                    }
                    left -= k;
                    out += k;
                    calls += 1;
                }
                calls = calls.saturating_sub(1);
                Ok(out)
            }
        }
        .map_err(err(&format!("{family:?}")))?;
        if r == 0 {
            return Err(format!("{family:?} returned 0 after {done} bytes"));
        }
        done += r as u64;
        calls += 1;
    }
    Ok((done, calls))
}

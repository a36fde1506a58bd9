//! Processes of the deployed layout: the brokers (`mitto server`, a nats-server of the suite's
//! own, a Zenoh router) and the clients (`mitto-bench child ROLE`), each a process of its own.
//! A [`Proc`] is a child that answers commands line by line: the parent writes a command on
//! its stdin and reads the answer from its stdout, with a time bound on every answer. Closing
//! its stdin tells a client to end (one that has not within 2 s is killed); a broker, which
//! does not read its stdin, is killed.

use crate::systems::procfs;
use anyhow::Context as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The hidden first argument that makes `mitto-bench` play a role (see the roles module).
pub const CHILD: &str = "child";

/// A child process speaking the line protocol.
pub(crate) struct Proc {
    /// What it is, for error messages (`mitto server`, `nats sub 3`).
    pub(crate) name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    /// Killed when dropped, without waiting for it to end by itself.
    kill: bool,
}

impl Proc {
    /// Starts `cmd` with piped stdin and stdout (stderr as given by the caller or inherited).
    pub(crate) fn spawn(name: impl Into<String>, mut cmd: Command) -> anyhow::Result<Proc> {
        let name = name.into();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("bench-child-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("spawning a reader thread")?;
        Ok(Proc {
            name,
            child,
            stdin,
            lines,
            kill: false,
        })
    }

    /// Starts a server that does not read its stdin (killed when dropped).
    fn server(name: impl Into<String>, cmd: Command) -> anyhow::Result<Proc> {
        let mut p = Proc::spawn(name, cmd)?;
        p.kill = true;
        Ok(p)
    }

    /// Starts `exe child ROLE ARGS...` (stderr inherited, so its errors show).
    pub(crate) fn role(
        name: impl Into<String>,
        exe: &Path,
        role: &str,
        args: &[String],
    ) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(exe);
        cmd.arg(CHILD).arg(role).args(args).stderr(Stdio::inherit());
        Proc::spawn(name, cmd)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time it has used so far (see [`procfs::cpu_time`]).
    pub(crate) fn cpu(&self) -> anyhow::Result<Duration> {
        procfs::cpu_time(self.pid()).with_context(|| format!("CPU time of {}", self.name))
    }

    /// Writes one command line.
    pub(crate) fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: writing {line:?}", self.name))
    }

    /// The next line it prints, within `timeout`.
    pub(crate) fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => Err(anyhow::anyhow!("{}: reading its output: {e}", self.name)),
            Err(RecvTimeoutError::Timeout) => Err(anyhow::anyhow!(
                "{}: no answer within {} ms",
                self.name,
                timeout.as_millis()
            )),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                Err(anyhow::anyhow!(
                    "{}: ended{}",
                    self.name,
                    status.map(|s| format!(" ({s})")).unwrap_or_default()
                ))
            }
        }
    }

    /// The next line, which must start with `word`; returns the words after it.
    pub(crate) fn expect(&mut self, word: &str, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let line = self.line(timeout)?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some(w) if w == word => Ok(words.map(str::to_owned).collect()),
            Some("error") => Err(anyhow::anyhow!(
                "{}: {}",
                self.name,
                line.trim_start_matches("error").trim()
            )),
            _ => Err(anyhow::anyhow!(
                "{}: expected {word:?}, got {line:?} ({} ms left)",
                self.name,
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
            )),
        }
    }

    /// Sends `line` and expects an answer starting with `word`.
    pub(crate) fn ask(
        &mut self,
        line: &str,
        word: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        self.send(line)?;
        self.expect(word, timeout)
    }

    /// Reads lines until one starts with `prefix`, within `timeout`; returns that line.
    pub(crate) fn wait_for(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left)?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let wait = if self.kill {
            Duration::ZERO
        } else {
            Duration::from_secs(2)
        };
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port of 127.0.0.1 (bound and released; another process could take it between
/// this and its use, which only fails that start).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

/// The binaries the deployed layout runs.
#[derive(Clone, Debug)]
pub(crate) struct Exes {
    /// `mitto-bench` itself (the client roles and the Zenoh router).
    pub(crate) bench: PathBuf,
    /// The `mitto` CLI (`mitto server`).
    pub(crate) mitto: PathBuf,
    /// `nats-server`, if installed.
    pub(crate) nats: Option<PathBuf>,
}

/// `mitto server` on a free port of 127.0.0.1, its defaults otherwise (no monitoring endpoint,
/// so that runs side by side do not fight over its port), with `extra` flags.
pub(crate) fn mitto_server(exe: &Path, extra: &[&str]) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--listen", "tcp://127.0.0.1:0", "--monitor", ""])
        .args(extra)
        .stderr(Stdio::null());
    let mut p = Proc::server(format!("mitto server {}", extra.join(" ")), cmd)?;
    let line = p.wait_for("mitto broker listening on ", Duration::from_secs(20))?;
    let url = line
        .trim_start_matches("mitto broker listening on ")
        .trim()
        .to_owned();
    anyhow::ensure!(url.starts_with("tcp://"), "mitto server printed {line:?}");
    Ok((p, url))
}

/// A nats-server of the suite's own on a free port of 127.0.0.1 (defaults, no JetStream, no
/// monitoring); returns it and its `127.0.0.1:PORT`.
pub(crate) fn nats_server(exe: &Path) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let mut cmd = Command::new(exe);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stderr(Stdio::null());
    let p = Proc::server("nats-server", cmd)?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nats-server did not listen on {addr} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, addr))
}

/// A Zenoh router (`mitto-bench child zenoh-router`) on a free port of 127.0.0.1; returns it
/// and its endpoint `tcp/127.0.0.1:PORT`.
pub(crate) fn zenoh_router(bench: &Path) -> anyhow::Result<(Proc, String)> {
    let endpoint = format!("tcp/127.0.0.1:{}", free_port()?);
    let mut p = Proc::role(
        "zenoh router",
        bench,
        "zenoh-router",
        &["--listen".into(), endpoint.clone()],
    )?;
    p.expect("ready", Duration::from_secs(30))?;
    Ok((p, endpoint))
}

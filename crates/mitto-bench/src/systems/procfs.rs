//! What `conn-memory` reads from `/proc`: a process's resident memory, and which process
//! listens on a TCP port of 127.0.0.1 (to find the nats-server that is already running).

use anyhow::Context as _;
use std::path::Path;

/// `VmRSS` of process `pid`, in bytes.
pub(crate) fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(n * 1024),
        Some(_) => None,
    }
}

/// The process with a listening TCP socket on `port` (IPv4 or IPv6), if this user may see it:
/// the socket's inode from `/proc/net/tcp*`, then the process holding that inode among its
/// file descriptors. Falls back to the first process whose command name is `comm`.
pub(crate) fn pid_listening_on(port: u16, comm: &str) -> Option<u32> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| listening_inodes(&t, port))
        .collect();
    let pids = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
    };
    if !inodes.is_empty() {
        let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
        for pid in pids() {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(link) = std::fs::read_link(fd.path()) {
                    if wanted.iter().any(|w| Path::new(w) == link) {
                        return Some(pid);
                    }
                }
            }
        }
    }
    pids().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    })
}

/// Inodes of the sockets listening (state `0A`) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_tcp_tables() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t   13488 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(13488 * 1024));
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                     0: 0100007F:107E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0 100 0 0 10 0\n   \
                     1: 0100007F:107E 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 4222), vec![31337]);
        assert!(listening_inodes(table, 1883).is_empty());
        let me = std::process::id();
        assert!(vm_rss(me).unwrap_or(0) > 0);
    }
}

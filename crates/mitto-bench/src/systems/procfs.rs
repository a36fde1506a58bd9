//! What the suite reads from `/proc`: a process's resident memory (`conn-memory`), the CPU time
//! it has used (the deployed broker scenarios), and which process listens on a TCP port of
//! 127.0.0.1 (to find a server that is already running).

use anyhow::Context as _;
use std::path::Path;
use std::time::Duration;

/// User plus system CPU time process `pid` has used so far, all its threads together (those
/// that have ended included): `utime + stime` of `/proc/PID/stat`, in clock ticks (10 ms
/// where `CLK_TCK` is 100).
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_cpu_ticks(&text).with_context(|| format!("no utime/stime in {path}"))?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces or parentheses itself, so the fields are counted
/// from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After the name: state (3), ppid (4) ... utime is field 14, the 12th after the name.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

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
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 112 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(731 + 112));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        // Burning CPU moves this process's count (bounded: at most 10 s of spinning).
        let before = cpu_time(me).unwrap_or(Duration::MAX);
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time(me).unwrap_or(Duration::ZERO) <= before
            && t.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        assert!(cpu_time(me).unwrap_or(Duration::ZERO) > before);
    }
}

//! The results file of a run (`mitto-bench ... --json FILE`): which code ran on which machine,
//! when, in which mode, and every row. One file per run goes into `benchmarks/results/`.

use crate::config::{Config, Mode};
use crate::report::{json_rows, JsonRow, ScenarioReport};
use anyhow::Context as _;
use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// The machine a run ran on, as far as this process can tell.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `model name` of `/proc/cpuinfo`.
    pub cpu: Option<String>,
    /// CPUs this process may use.
    pub cpus: usize,
    /// `MemTotal` of `/proc/meminfo`, GiB.
    pub memory_gib: Option<f64>,
    /// The kernel release.
    pub kernel: Option<String>,
    /// The compiler that built the suite.
    pub rustc: String,
    /// The load average (1, 5, 15 minutes) when the run ended.
    pub load: Option<String>,
}

impl Machine {
    /// This machine.
    pub fn here() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned());
        let memory_gib = read("/proc/meminfo").and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((kb / (1024.0 * 1024.0) * 10.0).round() / 10.0)
        });
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
            rustc: env!("MITTO_BENCH_RUSTC").to_owned(),
            load: read("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        }
    }
}

/// One results file.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// The run's name in BENCHMARKS.md's changelog (`--run NAME`), if given.
    pub run: Option<String>,
    /// When the run ended, UTC (`YYYY-MM-DDTHH:MM:SSZ`).
    pub date: String,
    /// `git rev-parse HEAD` of the working directory, if it is a git checkout.
    pub commit: Option<String>,
    /// Whether that checkout had uncommitted changes.
    pub dirty: Option<bool>,
    /// The machine.
    pub machine: Machine,
    /// `full`, `quick` or `tiny`.
    pub mode: &'static str,
    /// Repetitions of every measurement.
    pub reps: usize,
    /// Figures typed in from an older report rather than written by the suite.
    pub reconstructed: bool,
    /// The scenarios run, in order.
    pub scenarios: Vec<String>,
    /// Every row.
    pub rows: Vec<JsonRow>,
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Results {
    /// The results of `reports`, run with `config`, on this machine and checkout, now.
    pub fn new(run: Option<String>, config: &Config, reports: &[ScenarioReport]) -> Results {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Results {
            run,
            date: utc(now),
            commit: git(&["rev-parse", "HEAD"]),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
            machine: Machine::here(),
            mode: match config.mode {
                Mode::Full => "full",
                Mode::Quick => "quick",
                Mode::Tiny => "tiny",
            },
            reps: config.reps,
            reconstructed: false,
            scenarios: reports.iter().map(|r| r.scenario.clone()).collect(),
            rows: json_rows(reports),
        }
    }

    /// Writes it to `path`, pretty-printed.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}

//! What the broker throughput scenarios (`pubsub`, `fanout`) share, whatever the layout: what
//! a burst measured, the tally of delivered against published messages, and the rows and notes
//! they make.

use crate::measure::ThroughputAcc;
use crate::report::{format_value, Metric, Row, ScenarioReport};
use std::time::Duration;

/// What a broker throughput scenario measures.
pub(crate) struct FanSpec {
    /// The scenario's name.
    pub(crate) scenario: &'static str,
    /// The case in its rows (`1-to-1`, `1-to-10`).
    pub(crate) case: &'static str,
    /// Subscriber connections, each subscribed to the one subject.
    pub(crate) subscribers: usize,
    /// Payload sizes.
    pub(crate) sizes: &'static [usize],
}

/// What one burst did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Burst {
    /// Messages the publisher published.
    pub(crate) published: u64,
    /// Messages the subscribers received, all together.
    pub(crate) delivered: u64,
    /// Messages of an earlier burst that arrived during this one.
    pub(crate) stale: u64,
    /// First publish to last receive.
    pub(crate) elapsed: Duration,
    /// CPU time of every process of the system (broker and clients) during the burst; None
    /// where a process's could not be read.
    pub(crate) cpu: Option<Duration>,
    /// The publisher was still held (in a publish or the flush) at the burst's time bound.
    pub(crate) blocked: bool,
}

/// Delivered and expected messages of one system at one size, over the measured repetitions.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) stale: u64,
    pub(crate) bursts: u64,
    pub(crate) blocked: u64,
    /// Bursts whose CPU time could not be read.
    pub(crate) cpu_unknown: u64,
}

impl Tally {
    /// Adds a measured burst with `subscribers` subscribers to the tally and to `acc`.
    pub(crate) fn add(&mut self, acc: &mut ThroughputAcc, b: &Burst, subscribers: usize) {
        acc.add(b.delivered, b.elapsed);
        match b.cpu {
            Some(cpu) => acc.add_cpu(cpu),
            None => self.cpu_unknown += 1,
        }
        self.expected += b.published * subscribers as u64;
        self.delivered += b.delivered;
        self.stale += b.stale;
        self.bursts += 1;
        self.blocked += u64::from(b.blocked);
    }

    /// Messages lost: published × subscribers, less what arrived.
    pub(crate) fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// `SYSTEM SIZE B delivered of expected (pct)` and what else happened.
    pub(crate) fn line(&self, system: &str, size: usize) -> String {
        let pct = if self.expected > 0 {
            100.0 * self.delivered as f64 / self.expected as f64
        } else {
            0.0
        };
        let count = |n: u64| format_value(Metric::MsgsPerS, n as f64);
        let mut line = format!(
            "{system} {size} B {} of {} ({pct:.2}%)",
            count(self.delivered),
            count(self.expected)
        );
        if self.stale > 0 {
            line.push_str(&format!(", {} late from an earlier burst", self.stale));
        }
        if self.blocked > 0 {
            line.push_str(&format!(
                ", publisher still held at the time bound in {} of {} bursts",
                self.blocked, self.bursts
            ));
        }
        if self.cpu_unknown > 0 {
            line.push_str(", CPU time not readable");
        }
        line
    }
}

/// The samples of one system at one size: a rate and a CPU figure per repetition, and the
/// tally.
#[derive(Default)]
pub(crate) struct Measured {
    pub(crate) rates: Vec<f64>,
    pub(crate) cpu: Vec<f64>,
    pub(crate) tally: Tally,
}

impl Measured {
    /// Closes a repetition.
    pub(crate) fn push(&mut self, acc: &ThroughputAcc) -> anyhow::Result<()> {
        self.rates.push(acc.msgs_per_s()?);
        self.cpu.push(acc.cpu_us_per_msg());
        Ok(())
    }

    /// Its rows: msgs/s, CPU µs/msg (where every burst's CPU was read) and messages lost.
    pub(crate) fn rows(&self, spec: &FanSpec, system: &str, size: usize) -> Vec<Row> {
        let row = |metric, values: &[f64]| {
            super::row_from(spec.scenario, spec.case, system, metric, size, values)
        };
        let mut out = vec![row(Metric::MsgsPerS, &self.rates)];
        if self.tally.cpu_unknown == 0 {
            out.push(row(Metric::CpuUsPerMsg, &self.cpu));
        }
        out.push(row(Metric::LostMsgs, &[self.tally.lost() as f64]));
        out
    }
}

/// `mitto / peer` for every row of `peer` with `metric`: `SIZE B RATIOx`, followed by
/// `(met)` or `(MISSED)` when a target is given.
pub(crate) fn ratios(
    report: &ScenarioReport,
    peer: &str,
    metric: Metric,
    target: Option<f64>,
) -> Vec<String> {
    report
        .rows
        .iter()
        .filter(|r| r.system == peer && r.metric == metric)
        .filter_map(|r| {
            let x = report.mitto_ratio(r)?;
            let verdict = match target {
                None => "",
                Some(t) if (metric.higher_is_better() && x >= t) => " (met)",
                Some(t) if (!metric.higher_is_better() && x <= t) => " (met)",
                Some(_) => " (MISSED)",
            };
            Some(format!("{} B {x:.2}x{verdict}", r.payload_bytes))
        })
        .collect()
}

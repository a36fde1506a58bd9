//! Measuring loops shared by the scenarios: sequential round trips into an HDR histogram,
//! pipelined calls with a fixed number in flight, and the median/min/max of repetitions.

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use std::future::Future;
use std::time::{Duration, Instant};

/// Median, minimum and maximum of the repetitions of one measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) reps: usize,
}

/// The spread of `values` (the median of an even count is the mean of the middle two).
pub(crate) fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
        reps: n,
    }
}

/// CPU time this process has used so far, all threads together.
pub(crate) fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// CPU microseconds per message: `cpu` spent over `done` messages (0 without any).
fn cpu_us_per_msg(cpu: Duration, done: u64) -> f64 {
    if done == 0 {
        0.0
    } else {
        cpu.as_secs_f64() * 1e6 / done as f64
    }
}

/// The round trips of one system in one repetition, gathered over one or more slices.
pub(crate) struct LatencyAcc {
    hist: Histogram<u64>,
    done: u64,
    busy: Duration,
    /// CPU time of the whole process (client and server threads) while measuring.
    cpu: Duration,
}

/// What a [`LatencyAcc`] adds up to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LatencySample {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) msgs_per_s: f64,
    /// CPU microseconds (both ends together) per round trip.
    pub(crate) cpu_us: f64,
}

impl LatencyAcc {
    /// Round trips from 1 ns to 60 s, 3 significant digits.
    pub(crate) fn new() -> anyhow::Result<LatencyAcc> {
        Ok(LatencyAcc {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .context("creating the latency histogram")?,
            done: 0,
            busy: Duration::ZERO,
            cpu: Duration::ZERO,
        })
    }

    /// Round trips recorded.
    pub(crate) fn done(&self) -> u64 {
        self.done
    }

    /// Percentiles of every round trip recorded, and round trips per second of measuring.
    pub(crate) fn sample(&self) -> anyhow::Result<LatencySample> {
        anyhow::ensure!(self.done > 0, "no round trip completed");
        let secs = self.busy.as_secs_f64();
        Ok(LatencySample {
            p50_us: self.hist.value_at_quantile(0.50) as f64 / 1_000.0,
            p99_us: self.hist.value_at_quantile(0.99) as f64 / 1_000.0,
            msgs_per_s: if secs > 0.0 {
                self.done as f64 / secs
            } else {
                0.0
            },
            cpu_us: cpu_us_per_msg(self.cpu, self.done),
        })
    }
}

/// A loop of sequential round trips into a [`LatencyAcc`], for loops that cannot take a
/// closure (a task that must be `Send`): `while s.more() { let t0 = Instant::now(); ...;
/// if !s.record(acc, t0) { break } }`, then `s.finish(acc)`.
pub(crate) struct Sequential {
    count: u64,
    max: Duration,
    done: u64,
    cpu: Duration,
    start: Instant,
    last: Instant,
}

impl Sequential {
    /// Up to `count` round trips, until `max` has passed.
    pub(crate) fn new(count: u64, max: Duration) -> Sequential {
        let start = Instant::now();
        Sequential {
            count,
            max,
            done: 0,
            cpu: process_cpu(),
            start,
            last: start,
        }
    }

    /// Whether another round trip is due.
    pub(crate) fn more(&self) -> bool {
        self.done < self.count
    }

    /// Records a round trip that began at `t0` and ended now; false once `max` has passed.
    pub(crate) fn record(&mut self, acc: &mut LatencyAcc, t0: Instant) -> bool {
        self.last = Instant::now();
        let ns = u64::try_from((self.last - t0).as_nanos()).unwrap_or(u64::MAX);
        acc.hist.saturating_record(ns.max(1));
        self.done += 1;
        self.last - self.start < self.max
    }

    /// Adds the round trips, the time and the process's CPU time to `acc`.
    pub(crate) fn finish(self, acc: &mut LatencyAcc) {
        acc.done += self.done;
        acc.busy += self.last - self.start;
        acc.cpu += process_cpu().saturating_sub(self.cpu);
    }
}

/// Runs `op` one call at a time, `count` times or until `max` has passed, recording every
/// round trip (nanoseconds) into `acc`.
pub(crate) async fn sequential<F>(
    acc: &mut LatencyAcc,
    count: u64,
    max: Duration,
    mut op: F,
) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> anyhow::Result<()>,
{
    let mut s = Sequential::new(count, max);
    while s.more() {
        let t0 = Instant::now();
        op().await?;
        if !s.record(acc, t0) {
            break;
        }
    }
    s.finish(acc);
    Ok(())
}

/// The calls of one system in one repetition, gathered over one or more slices.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ThroughputAcc {
    done: u64,
    busy: Duration,
    /// CPU time of the whole process while measuring (where the loop records it).
    cpu: Duration,
}

impl ThroughputAcc {
    /// Adds `done` messages completed in `busy` (for loops that time themselves, such as the
    /// broker bursts, measured from the first publish to the last receive).
    pub(crate) fn add(&mut self, done: u64, busy: Duration) {
        self.done += done;
        self.busy += busy;
    }

    /// Adds CPU time measured outside this process (the processes of the deployed layout).
    pub(crate) fn add_cpu(&mut self, cpu: Duration) {
        self.cpu += cpu;
    }

    /// CPU microseconds of the whole process per completed call (0 where not recorded).
    pub(crate) fn cpu_us_per_msg(&self) -> f64 {
        cpu_us_per_msg(self.cpu, self.done)
    }

    /// Calls completed per second of measuring.
    pub(crate) fn msgs_per_s(&self) -> anyhow::Result<f64> {
        anyhow::ensure!(self.done > 0, "no call completed");
        let secs = self.busy.as_secs_f64();
        Ok(if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        })
    }
}

/// Keeps `in_flight` calls of `op` outstanding at all times (refilling one as each completes),
/// until `count` calls were issued or `max` has passed, then waits for the ones in flight; adds
/// the calls and the time to `acc`. Calls are polled from this one task, so every system is
/// driven the same way.
pub(crate) async fn pipelined<F, Fut>(
    acc: &mut ThroughputAcc,
    in_flight: usize,
    count: u64,
    max: Duration,
    mut op: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut pending = FuturesUnordered::new();
    let cpu = process_cpu();
    let start = Instant::now();
    let mut issued = 0u64;
    let mut done = 0u64;
    while issued < count && pending.len() < in_flight.max(1) {
        pending.push(op());
        issued += 1;
    }
    let mut open = true;
    while let Some(result) = pending.next().await {
        result?;
        done += 1;
        if open && issued < count {
            if start.elapsed() < max {
                pending.push(op());
                issued += 1;
            } else {
                open = false;
            }
        }
    }
    acc.done += done;
    acc.busy += start.elapsed();
    acc.cpu += process_cpu().saturating_sub(cpu);
    Ok(())
}

/// Splits a repetition's `count` and `max` into `slices` equal parts (at least one operation
/// each) so that systems can take turns inside one repetition.
pub(crate) fn slice(count: u64, max: Duration, slices: u32) -> (u64, Duration) {
    let k = slices.max(1);
    ((count / u64::from(k)).max(1), max / k)
}

/// Runs a synchronous operation in batches of `batch` until `count` operations or `max` time,
/// and returns nanoseconds per operation. Only the time inside `run_batch` counts.
pub(crate) fn ns_per_op(
    count: u64,
    max: Duration,
    batch: u64,
    mut run_batch: impl FnMut(u64) -> anyhow::Result<Duration>,
) -> anyhow::Result<f64> {
    let wall = Instant::now();
    let mut ops = 0u64;
    let mut busy = Duration::ZERO;
    while ops < count {
        let n = batch.max(1).min(count - ops);
        busy += run_batch(n)?;
        ops += n;
        if wall.elapsed() >= max {
            break;
        }
    }
    anyhow::ensure!(ops > 0, "no operation ran");
    Ok(busy.as_nanos() as f64 / ops as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = spread(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max, s.reps), (3.0, 1.0, 5.0, 3));
        let s = spread(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(spread(&[]).median, 0.0);
    }
}

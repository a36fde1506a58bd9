//! Result rows, the text table with mitto/peer ratios, and the JSON output.

use serde::Serialize;
use std::fmt::Write as _;

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Completed messages (calls, round trips) per second; higher is better.
    MsgsPerS,
    /// Median round trip, microseconds; lower is better.
    P50Us,
    /// 99th-percentile round trip, microseconds; lower is better.
    P99Us,
    /// Nanoseconds per operation; lower is better.
    NsPerOp,
    /// Payload bytes per second; higher is better.
    BytesPerS,
    /// Resident memory per connection, bytes; lower is better.
    BytesPerConn,
    /// CPU time per message of every process of the system (client and server threads, or the
    /// broker and client processes), microseconds; lower is better.
    CpuUsPerMsg,
    /// Messages published but not delivered (each subscriber's share counted); lower is better.
    LostMsgs,
}

impl Metric {
    /// The name used in the JSON output.
    pub fn key(self) -> &'static str {
        match self {
            Metric::MsgsPerS => "msgs_per_s",
            Metric::P50Us => "p50_us",
            Metric::P99Us => "p99_us",
            Metric::NsPerOp => "ns_per_op",
            Metric::BytesPerS => "bytes_per_s",
            Metric::BytesPerConn => "bytes_per_conn",
            Metric::CpuUsPerMsg => "cpu_us_per_msg",
            Metric::LostMsgs => "lost_msgs",
        }
    }

    /// The unit.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::MsgsPerS => "msg/s",
            Metric::P50Us | Metric::P99Us => "us",
            Metric::NsPerOp => "ns",
            Metric::BytesPerS => "B/s",
            Metric::BytesPerConn => "B",
            Metric::CpuUsPerMsg => "us",
            Metric::LostMsgs => "msg",
        }
    }

    /// The column label in the table.
    pub fn label(self) -> &'static str {
        match self {
            Metric::MsgsPerS => "msgs/s",
            Metric::P50Us => "p50 µs",
            Metric::P99Us => "p99 µs",
            Metric::NsPerOp => "ns/op",
            Metric::BytesPerS => "B/s",
            Metric::BytesPerConn => "B/conn",
            Metric::CpuUsPerMsg => "CPU µs/msg",
            Metric::LostMsgs => "lost",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::MsgsPerS | Metric::BytesPerS)
    }
}

/// One measured value: the median over the repetitions, with their min and max.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The scenario's CLI name (`codec`, `rpc-latency`, ...).
    pub scenario: String,
    /// The variant inside the scenario (`encode`, `decode`, `tcp`, `unix`, `pipelined-256`).
    pub case: String,
    /// `mitto`, a peer (`tarpc`, `tonic`, `protosocket-rpc`) or a floor (`memcpy`, `raw-tcp`,
    /// `raw-unix`).
    pub system: String,
    /// What was measured.
    pub metric: Metric,
    /// The payload size.
    pub payload_bytes: u64,
    /// Median over the repetitions.
    pub value: f64,
    /// Smallest repetition.
    pub min: f64,
    /// Largest repetition.
    pub max: f64,
    /// Number of repetitions.
    pub reps: usize,
}

/// The name of the system under test in every row.
pub const MITTO: &str = "mitto";
/// mitto in latency mode (both ends, or the broker and its clients), its rows' name.
pub const MITTO_BUSY_POLL: &str = "mitto-busy-poll";
/// mitto with spin-then-park off at both ends (sleeping until woken, as the peers and floors
/// do), its rows' name.
pub const MITTO_NO_SPIN: &str = "mitto-no-spin";
/// The latency mode's polling window wherever a scenario measures it.
pub const BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(200);

/// What one scenario produced.
#[derive(Clone, Debug, Default)]
pub struct ScenarioReport {
    /// The scenario's CLI name.
    pub scenario: String,
    /// Rows in display order.
    pub rows: Vec<Row>,
    /// Lines printed under the table (targets, checks, the best peer).
    pub notes: Vec<String>,
}

impl ScenarioReport {
    /// The row of `system` for the same case, payload and metric as `like`.
    pub fn matching(&self, like: &Row, system: &str) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.system == system
                && r.case == like.case
                && r.metric == like.metric
                && r.payload_bytes == like.payload_bytes
        })
    }

    /// `mitto / row` for a peer or floor row (None for mitto's own rows, a zero value, or a
    /// count of lost messages).
    pub fn mitto_ratio(&self, row: &Row) -> Option<f64> {
        if row.system == MITTO || row.value <= 0.0 || row.metric == Metric::LostMsgs {
            return None;
        }
        self.matching(row, MITTO).map(|m| m.value / row.value)
    }

    /// Rows of one system.
    pub fn rows_of<'a>(&'a self, system: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
        self.rows.iter().filter(move |r| r.system == system)
    }
}

/// Formats a value for the table: grouped integers for rates, one decimal for times.
pub fn format_value(metric: Metric, v: f64) -> String {
    match metric {
        Metric::MsgsPerS | Metric::BytesPerS | Metric::BytesPerConn | Metric::LostMsgs => {
            group(v.round() as u64)
        }
        Metric::NsPerOp if v >= 10_000.0 => group(v.round() as u64),
        Metric::CpuUsPerMsg => format!("{v:.2}"),
        Metric::NsPerOp | Metric::P50Us | Metric::P99Us if v >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `16 B`, `1 KiB`, `64 KiB`, `1 MiB`; nothing for 0 (rows without a payload).
pub fn format_size(n: u64) -> String {
    match n {
        0 => String::new(),
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The table of one scenario, ratios included, followed by its notes.
pub fn render(report: &ScenarioReport) -> String {
    const HEAD: [&str; 8] = [
        "scenario",
        "case",
        "system",
        "payload",
        "metric",
        "value (median)",
        "min–max",
        "mitto/this",
    ];
    let mut cells: Vec<[String; 8]> = Vec::with_capacity(report.rows.len());
    for r in &report.rows {
        let range = if r.reps > 1 {
            format!(
                "{}–{}",
                format_value(r.metric, r.min),
                format_value(r.metric, r.max)
            )
        } else {
            String::new()
        };
        let ratio = report
            .mitto_ratio(r)
            .map(|x| format!("{x:.2}x"))
            .unwrap_or_default();
        cells.push([
            r.scenario.clone(),
            r.case.clone(),
            r.system.clone(),
            format_size(r.payload_bytes),
            r.metric.label().to_owned(),
            format_value(r.metric, r.value),
            range,
            ratio,
        ]);
    }
    let mut widths = HEAD.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String; 8]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            // Text left, numbers right.
            if i >= 5 {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
            s.push_str("  ");
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&mut out, &HEAD.map(str::to_owned));
    let rule: [String; 8] = widths.map(|w| "-".repeat(w));
    line(&mut out, &rule);
    for row in &cells {
        line(&mut out, row);
    }
    let _ = writeln!(
        out,
        "ratio = mitto / this row: for msgs/s above 1 means mitto is faster, for µs and ns/op \
         above 1 means mitto is slower, for B/conn above 1 means mitto uses more memory, for \
         CPU µs/msg above 1 means mitto uses more CPU."
    );
    for n in &report.notes {
        let _ = writeln!(out, "{n}");
    }
    out
}

/// One object of the `--json` array.
#[derive(Clone, Debug, Serialize)]
pub struct JsonRow {
    /// The scenario's CLI name.
    pub scenario: String,
    /// The variant inside the scenario.
    pub case: String,
    /// `mitto`, a peer or a floor.
    pub system: String,
    /// `msgs_per_s`, `p50_us`, `p99_us`, `ns_per_op`, `bytes_per_s`, `bytes_per_conn`,
    /// `cpu_us_per_msg` or `lost_msgs`.
    pub metric: &'static str,
    /// Median over the repetitions.
    pub value: f64,
    /// `msg/s`, `us`, `ns`, `B/s`, `B` or `msg`.
    pub unit: &'static str,
    /// Payload size in bytes.
    pub payload_bytes: u64,
    /// Smallest repetition.
    pub min: f64,
    /// Largest repetition.
    pub max: f64,
    /// Number of repetitions.
    pub reps: usize,
}

/// The JSON rows of `reports`; each `ns_per_op` row with a payload also yields a derived
/// `bytes_per_s` row (payload / time).
pub fn json_rows(reports: &[ScenarioReport]) -> Vec<JsonRow> {
    let mut out = Vec::new();
    for r in reports.iter().flat_map(|rep| &rep.rows) {
        let row = |metric: Metric, value: f64, min: f64, max: f64| JsonRow {
            scenario: r.scenario.clone(),
            case: r.case.clone(),
            system: r.system.clone(),
            metric: metric.key(),
            value,
            unit: metric.unit(),
            payload_bytes: r.payload_bytes,
            min,
            max,
            reps: r.reps,
        };
        out.push(row(r.metric, r.value, r.min, r.max));
        if r.metric == Metric::NsPerOp && r.payload_bytes > 0 && r.value > 0.0 {
            let bps = |ns: f64| {
                if ns > 0.0 {
                    r.payload_bytes as f64 * 1e9 / ns
                } else {
                    0.0
                }
            };
            // The fastest repetition has the most bytes per second.
            out.push(row(Metric::BytesPerS, bps(r.value), bps(r.max), bps(r.min)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, metric: Metric, value: f64) -> Row {
        Row {
            scenario: "s".into(),
            case: "c".into(),
            system: system.into(),
            metric,
            payload_bytes: 32,
            value,
            min: value,
            max: value,
            reps: 1,
        }
    }

    #[test]
    fn ratios_and_formatting() {
        let rep = ScenarioReport {
            scenario: "s".into(),
            rows: vec![
                row(MITTO, Metric::MsgsPerS, 300.0),
                row("peer", Metric::MsgsPerS, 100.0),
            ],
            notes: vec![],
        };
        assert_eq!(rep.mitto_ratio(&rep.rows[1]), Some(3.0));
        assert_eq!(rep.mitto_ratio(&rep.rows[0]), None);
        assert_eq!(format_value(Metric::MsgsPerS, 1_234_567.4), "1,234,567");
        assert_eq!(format_size(65536), "64 KiB");
        assert_eq!(format_size(32), "32 B");
        assert_eq!(format_size(0), "");
        assert_eq!(format_value(Metric::BytesPerConn, 4321.6), "4,322");
        assert_eq!(format_value(Metric::CpuUsPerMsg, 0.8349), "0.83");
        assert_eq!(Metric::CpuUsPerMsg.key(), "cpu_us_per_msg");
        assert!(!Metric::CpuUsPerMsg.higher_is_better());
        assert_eq!(Metric::BytesPerConn.key(), "bytes_per_conn");
        assert!(!Metric::BytesPerConn.higher_is_better());
        assert!(render(&rep).contains("3.00x"));
        let json = json_rows(&[rep]);
        assert_eq!(json.len(), 2);
        assert_eq!(json[0].metric, "msgs_per_s");
    }
}

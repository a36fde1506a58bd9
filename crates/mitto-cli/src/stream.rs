//! `mitto stream add|ls|info|rm|purge`, `mitto sub --stream`, and where `mitto server` keeps
//! its streams.

use crate::{connect, text, ClientArgs, SubArgs};
use clap::{Args, Subcommand};
use mitto::streams::{
    ConsumerConfig, DeliverFrom, Discard, Fsync, StreamConfig, StreamInfo, StreamMeta,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `mitto stream ...`
#[derive(Subcommand, Debug)]
pub(crate) enum StreamCmd {
    /// Creates a stream.
    Add(AddArgs),
    /// Lists the streams you may see.
    Ls(ClientArgs),
    /// Shows a stream's configuration and state.
    Info(NameArgs),
    /// Deletes a stream, its messages and its consumers.
    Rm(NameArgs),
    /// Removes a stream's messages.
    Purge(PurgeArgs),
}

#[derive(Args, Debug)]
pub(crate) struct AddArgs {
    /// Stream name (1 to 64 of A-Z a-z 0-9 _ -).
    name: String,
    /// Subjects it captures (wildcards allowed); repeat or separate with commas.
    #[arg(long, short, required = true, value_delimiter = ',')]
    subjects: Vec<String>,
    /// Keep at most this many messages.
    #[arg(long)]
    max_msgs: Option<u64>,
    /// Keep at most this many bytes.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Remove messages older than this (e.g. 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    max_age: Option<Duration>,
    /// When full: old (remove the oldest) or new (refuse new messages).
    #[arg(long, default_value = "old", value_parser = ["old", "new"])]
    discard: String,
    /// always (acknowledge after fsync), interval or os.
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "os"])]
    fsync: String,
    /// With --fsync interval: how often.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    fsync_interval: Duration,
    /// A publish repeating a mitto-msg-id header seen this recently is not stored again
    /// (default 2m; 0s turns it off).
    #[arg(long, value_parser = humantime::parse_duration)]
    duplicate_window: Option<Duration>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub(crate) struct NameArgs {
    /// Stream name.
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub(crate) struct PurgeArgs {
    /// Stream name.
    name: String,
    /// Remove only the messages below this sequence.
    #[arg(long)]
    before: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

fn show(info: &StreamInfo, json: bool) {
    let s = &info.state;
    if json {
        println!(
            "{}",
            serde_json::json!({"config": info.config, "state": {"msgs": s.msgs, "bytes": s.bytes,
                "first_seq": s.first_seq, "last_seq": s.last_seq, "failed": s.failed}})
        );
    } else {
        println!(
            "{}: {} message(s), {} bytes, sequences {}..={}, subjects {}{}",
            info.name(),
            s.msgs,
            s.bytes,
            s.first_seq,
            s.last_seq,
            info.config["subjects"],
            if s.failed {
                " (FAILED: restart the broker)"
            } else {
                ""
            }
        );
    }
}

pub(crate) async fn run(cmd: StreamCmd) -> mitto::Result<()> {
    match cmd {
        StreamCmd::Add(a) => {
            let c = connect(&a.client, "mitto-stream").await?;
            let mut cfg = StreamConfig::new(a.subjects.clone()).discard(match a.discard.as_str() {
                "new" => Discard::New,
                _ => Discard::Old,
            });
            cfg = cfg.fsync(match a.fsync.as_str() {
                "interval" => Fsync::Interval(a.fsync_interval),
                "os" => Fsync::Os,
                _ => Fsync::Always,
            });
            if let Some(n) = a.max_msgs {
                cfg = cfg.max_msgs(n);
            }
            if let Some(n) = a.max_bytes {
                cfg = cfg.max_bytes(n);
            }
            if let Some(d) = a.max_age {
                cfg = cfg.max_age(d);
            }
            if let Some(d) = a.duplicate_window {
                cfg = cfg.duplicate_window(d);
            }
            show(&c.stream(&a.name).create(cfg).await?, a.client.json);
            c.close().await;
        }
        StreamCmd::Ls(a) => {
            let c = connect(&a, "mitto-stream").await?;
            let list = c.streams().await?;
            if list.is_empty() && !a.json {
                println!("no streams");
            }
            for s in &list {
                show(s, a.json);
            }
            c.close().await;
        }
        StreamCmd::Info(a) => {
            let c = connect(&a.client, "mitto-stream").await?;
            show(&c.stream(&a.name).info().await?, a.client.json);
            c.close().await;
        }
        StreamCmd::Rm(a) => {
            let c = connect(&a.client, "mitto-stream").await?;
            c.stream(&a.name).delete().await?;
            println!("deleted stream {}", a.name);
            c.close().await;
        }
        StreamCmd::Purge(a) => {
            let c = connect(&a.client, "mitto-stream").await?;
            let n = c.stream(&a.name).purge(a.before).await?;
            println!("purged {n} message(s) from {}", a.name);
            c.close().await;
        }
    }
    Ok(())
}

/// Parses `--from`: all, last, new, a sequence, or an RFC 3339 time.
pub(crate) fn parse_from(s: &str) -> Result<DeliverFrom, String> {
    Ok(match s {
        "all" => DeliverFrom::All,
        "last" => DeliverFrom::Last,
        "new" => DeliverFrom::New,
        s => match s.parse::<u64>() {
            Ok(n) => DeliverFrom::Seq(n),
            Err(_) => DeliverFrom::Time(
                humantime::parse_rfc3339_weak(s)
                    .map_err(|_| "all, last, new, a sequence or an RFC 3339 time".to_owned())?,
            ),
        },
    })
}

/// `mitto sub --stream S --durable D [FILTER]`: consumer D of stream S (created with
/// `--from` if new), each message acknowledged once printed.
pub(crate) async fn consume(a: SubArgs, stream: &str) -> mitto::Result<()> {
    let c = connect(&a.client, "mitto-sub").await?;
    let durable = a.durable.clone().unwrap_or_default();
    let mut cfg = ConsumerConfig::new().deliver(a.from.unwrap_or_default());
    if let Some(f) = &a.subject {
        cfg = cfg.filter(f.clone());
    }
    let mut con = c.consumer(stream, &durable, cfg).await?;
    if !a.client.json {
        eprintln!("consuming stream {stream} as {durable}");
    }
    let mut n = 0u64;
    while a.count.is_none_or(|max| n < max) {
        let Some(m) = con.next().await else { break };
        n += 1;
        let seq = m.stream_seq().unwrap_or(0);
        if a.client.json {
            println!(
                "{}",
                serde_json::json!({"stream": stream, "seq": seq, "subject": m.subject(),
                    "payload": text(m.payload()), "delivery_count": m.delivery_count()})
            );
        } else {
            println!("[{stream} #{seq}] {}: {}", m.subject(), text(m.payload()));
        }
        // Printed first: a crash between the two delivers it again, it is never lost.
        con.ack(&m);
    }
    drop(con);
    c.close().await;
    Ok(())
}

/// Where `mitto server` keeps its streams when the configuration names no `data_dir`:
/// `mitto-data` beside the configuration file, or the platform's data folder.
pub(crate) fn default_data_dir(config: Option<&Path>) -> PathBuf {
    if let Some(p) = config {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        return dir.unwrap_or(Path::new(".")).join("mitto-data");
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = if cfg!(windows) {
        env("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library/Application Support"))
    } else {
        env("XDG_DATA_HOME").or_else(|| env("HOME").map(|h| h.join(".local/share")))
    };
    base.unwrap_or_else(|| PathBuf::from(".")).join("mitto")
}

/// A `data_dir` the configuration file gives relative to itself.
pub(crate) fn resolve(config: Option<&Path>, dir: PathBuf) -> PathBuf {
    match config.and_then(Path::parent) {
        Some(base) if dir.is_relative() && !base.as_os_str().is_empty() => base.join(dir),
        _ => dir,
    }
}

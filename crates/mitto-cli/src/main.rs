//! `mitto`: run the broker, and talk to it from a terminal or a script.

mod bench;
mod exit;
mod stream;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use exit::Failure;
use mitto::proto::{HeaderKey, WellKnown};
use mitto::{
    CallOptions, Client, ClientOptions, Delivery, Headers, PublishOptions, Status, SubscribeOptions,
};
use mitto_broker::{Broker, BrokerConfig, PolicyName, DEFAULT_LISTEN};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "mitto",
    version,
    about = "mitto: fast binary messaging. Runs the broker and talks to it.",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the broker (defaults: tcp://127.0.0.1:4747, monitoring on 127.0.0.1:8747).
    #[command(
        after_help = "Examples:\n  mitto server\n  mitto server --listen 0.0.0.0:4747 --listen unix:///tmp/mitto.sock\n  mitto server --listen tcp://127.0.0.1:4747 --listen ws://127.0.0.1:4748\n  mitto server --config mitto.toml --max-payload 1048576 --token s3cret"
    )]
    Server(ServerArgs),
    /// Publishes a message.
    #[command(
        after_help = "Examples:\n  mitto pub orders.created '{\"id\":1}'\n  mitto pub metrics.cpu 42 --count 1000 --header content-type=text/plain\n  mitto pub alerts.disk full --urgent --ack"
    )]
    Pub(PubArgs),
    /// Subscribes and prints what arrives.
    #[command(
        after_help = "Examples:\n  mitto sub 'orders.>'\n  mitto sub 'jobs.*' --queue workers --count 10 --json\n  mitto sub 'billing.>' --ack --durable billing"
    )]
    Sub(SubArgs),
    /// Sends a request and prints the reply.
    #[command(
        after_help = "Examples:\n  mitto req svc.echo hello\n  mitto req calc.add '[1,2]' --timeout 500ms --json"
    )]
    Req(ReqArgs),
    /// Answers requests on a subject.
    #[command(
        after_help = "Examples:\n  mitto reply svc.echo --echo\n  mitto reply svc.date --command date\n  mitto reply svc.upper --queue upper --command 'tr a-z A-Z'"
    )]
    Reply(ReplyArgs),
    /// Prints the broker's counters.
    #[command(after_help = "Examples:\n  mitto stats\n  mitto stats --json | jq .msgs_in")]
    Stats(ClientArgs),
    /// Load against a broker: publish, subscribe or request rates and latency percentiles.
    Bench(bench::BenchArgs),
    /// Manages durable streams (messages the broker keeps on disk).
    #[command(
        subcommand,
        after_help = "Examples:\n  mitto stream add orders --subjects 'orders.>' --max-age 7days\n  mitto stream ls\n  mitto stream info orders\n  mitto stream purge orders --before 1000\n  mitto stream rm orders\n  mitto sub --stream orders --durable billing"
    )]
    Stream(stream::StreamCmd),
}

#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// TOML configuration file (values here override the embedded defaults).
    #[arg(long, short, env = "MITTO_CONFIG")]
    config: Option<PathBuf>,
    /// Listener URL (tcp://, unix://, tls://, ws://, wss://; a bare host:port is tcp://); repeat
    /// for several.
    #[arg(long, env = "MITTO_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Monitoring HTTP address on loopback ("" turns it off; beyond loopback it needs
    /// --monitor-token).
    #[arg(long, env = "MITTO_MONITOR")]
    monitor: Option<String>,
    /// Token the monitoring endpoint requires (Authorization: Bearer <token>).
    #[arg(long, env = "MITTO_MONITOR_TOKEN", hide_env_values = true)]
    monitor_token: Option<String>,
    /// Largest payload accepted, bytes.
    #[arg(long, env = "MITTO_MAX_PAYLOAD")]
    max_payload: Option<u32>,
    /// Most client connections at once.
    #[arg(long, env = "MITTO_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most subscriptions per connection.
    #[arg(long, env = "MITTO_MAX_SUBSCRIPTIONS")]
    max_subscriptions: Option<usize>,
    /// Most bytes queued for one connection.
    #[arg(long, env = "MITTO_MAX_PENDING_BYTES")]
    max_pending_bytes: Option<usize>,
    /// On shutdown (SIGTERM, Ctrl-C), how long to keep delivering what is queued and waiting
    /// for acknowledgements before closing the connections, in milliseconds (default 10000).
    #[arg(long, env = "MITTO_SHUTDOWN_DRAIN_MS")]
    shutdown_drain_ms: Option<u64>,
    /// Default slow-consumer policy: block, drop-oldest, drop-newest, disconnect.
    #[arg(long, env = "MITTO_SLOW_CONSUMER", value_parser = parse_policy)]
    slow_consumer: Option<PolicyName>,
    /// Token every client must present.
    #[arg(
        long,
        env = "MITTO_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File whose first line is the token every client must present (keeps it out of the
    /// process list).
    #[arg(long, env = "MITTO_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Latency mode: keep polling the sockets this many microseconds after each read instead
    /// of sleeping (one CPU busy while traffic flows); the broker then runs on one thread.
    #[arg(long, env = "MITTO_BUSY_POLL_US")]
    busy_poll_us: Option<u64>,
    /// Spin-then-park window of each connection, in microseconds (default 100, 0 turns it
    /// off): a connection whose reads come closer together than this keeps being polled for
    /// this long after a read instead of sleeping between them.
    #[arg(long, env = "MITTO_SPIN_US")]
    spin_us: Option<u64>,
    /// Where streams are kept (default: mitto-data beside --config, or the platform's data
    /// folder, e.g. ~/.local/share/mitto).
    #[arg(long, env = "MITTO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter (tracing's env-filter syntax), e.g. info or mitto_broker=debug.
    #[arg(long, env = "MITTO_LOG", default_value = "info")]
    log: String,
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Broker URL (a bare host:port is tcp://).
    #[arg(long, short, visible_alias = "server", env = "MITTO_URL", default_value = DEFAULT_LISTEN,
        value_parser = parse_url)]
    url: String,
    /// Token to authenticate with.
    #[arg(
        long,
        env = "MITTO_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File whose first line is the token (keeps it out of the process list).
    #[arg(long, env = "MITTO_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// User name (with --password or --password-file).
    #[arg(long, env = "MITTO_USER")]
    user: Option<String>,
    /// Password (with --user).
    #[arg(
        long,
        env = "MITTO_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file"
    )]
    password: Option<String>,
    /// File whose first line is the password (with --user).
    #[arg(long, env = "MITTO_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Output JSON, one object per line.
    #[arg(long)]
    json: bool,
    /// How long to wait for the broker (connect, replies, acks).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args, Debug)]
struct PubArgs {
    /// Subject to publish to (no wildcards).
    subject: String,
    /// Payload (UTF-8 text).
    data: String,
    /// Publish this many times.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// A header as KEY=VALUE (well-known names like content-type use compact ids); repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Mark URGENT (overtakes queued messages).
    #[arg(long)]
    urgent: bool,
    /// Wait for the broker's ACK of every message.
    #[arg(long)]
    ack: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
struct SubArgs {
    /// Subject filter (`*` one token, `>` the rest); with --stream, only these subjects of the
    /// stream.
    #[arg(required_unless_present = "stream")]
    subject: Option<String>,
    /// Consume this durable stream (with --durable naming the consumer, created if new): its
    /// stored messages, then new ones, each acknowledged once printed; the consumer's position
    /// survives restarts.
    #[arg(long, requires = "durable", conflicts_with = "queue")]
    stream: Option<String>,
    /// With --stream, where a new consumer starts: all, last, new, a sequence or an RFC 3339
    /// time.
    #[arg(long, requires = "stream", value_parser = stream::parse_from)]
    from: Option<mitto::streams::DeliverFrom>,
    /// Join this queue group (each message goes to one member).
    #[arg(long, short)]
    queue: Option<String>,
    /// At-least-once: acknowledge each message once it is printed; one not acknowledged (this
    /// process stopped first) is delivered again, here or to another subscriber.
    #[arg(long)]
    ack: bool,
    /// Durable name: the broker keeps the messages for the next subscriber of this name when
    /// this one goes away.
    /// With --stream: the name of the stream's durable consumer.
    #[arg(long, conflicts_with = "queue")]
    durable: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Print each message's headers, one `name: value` line each, under the message.
    #[arg(long)]
    headers: bool,
    /// Give up after this many failed reconnect attempts in a row once the broker is gone
    /// (exit code 3); by default it keeps trying until stopped.
    #[arg(long, value_name = "N", conflicts_with = "stream")]
    max_reconnects: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
struct ReqArgs {
    /// Subject of the service.
    subject: String,
    /// Request payload (UTF-8 text).
    data: String,
    /// A header as KEY=VALUE; repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    headers: Vec<(String, String)>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
struct ReplyArgs {
    /// Subject (filter) to answer.
    subject: String,
    /// Join this queue group (requests are spread over the members).
    #[arg(long, short)]
    queue: Option<String>,
    /// Answer with the request's payload.
    #[arg(long, conflicts_with = "command")]
    echo: bool,
    /// Answer with the output of this shell command, fed the request on stdin.
    #[arg(long)]
    command: Option<String>,
    /// Exit after this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Give up after this many failed reconnect attempts in a row once the broker is gone
    /// (exit code 3); by default it keeps trying until stopped.
    #[arg(long, value_name = "N")]
    max_reconnects: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_policy(s: &str) -> Result<PolicyName, String> {
    match s.replace('_', "-").as_str() {
        "block" => Ok(PolicyName::Block),
        "drop-oldest" => Ok(PolicyName::DropOldest),
        "drop-newest" => Ok(PolicyName::DropNewest),
        "disconnect" => Ok(PolicyName::Disconnect),
        _ => Err(format!(
            "{s:?}: expected block, drop-oldest, drop-newest or disconnect"
        )),
    }
}

fn parse_url(s: &str) -> Result<String, String> {
    s.parse::<mitto::__private::transport::Endpoint>()
        .map(|_| s.to_owned())
        .map_err(|e| e.message().to_owned())
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty header name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn headers(list: &[(String, String)]) -> mitto::Result<Option<Headers>> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut b = Headers::builder();
    for (k, v) in list {
        b = b.insert_custom(k, v)?;
    }
    Ok(Some(b.build()))
}

/// The first line of a secret file.
fn read_secret(path: &std::path::Path) -> mitto::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        mitto::Error::new(
            Status::BAD_REQUEST,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    match text.lines().next().map(str::trim_end) {
        Some(line) if !line.is_empty() => Ok(line.to_owned()),
        _ => Err(mitto::Error::new(
            Status::BAD_REQUEST,
            format!("{} holds no secret on its first line", path.display()),
        )),
    }
}

async fn connect(a: &ClientArgs, name: &str) -> mitto::Result<Client> {
    dial(a, name, false, None).await
}

/// Connects for a one-shot command (no reconnect), telling a broker that is away apart.
async fn open(a: &ClientArgs, name: &str) -> Result<Client, Failure> {
    dial(a, name, false, None)
        .await
        .map_err(Failure::connecting)
}

/// Connects for a command that runs until stopped: it reconnects (and resubscribes) after
/// the broker restarts, and says so on stderr; with `max_reconnects`, it gives up after as
/// many failed attempts in a row (see [`gave_up`]).
async fn open_lasting(
    a: &ClientArgs,
    name: &str,
    max_reconnects: Option<u32>,
) -> Result<(Client, Watch), Failure> {
    let c = dial(a, name, true, max_reconnects)
        .await
        .map_err(Failure::connecting)?;
    let watch = Watch(tokio::spawn(report_connection(c.clone(), a.url.clone())));
    Ok((c, watch))
}

/// The task that reports connection losses; it stops with the command.
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn report_connection(c: Client, url: String) {
    let mut up = true;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match (up, c.is_connected()) {
            (true, false) => eprintln!("mitto: disconnected from {url}, retrying"),
            (false, true) => eprintln!("mitto: reconnected to {url}"),
            _ => continue,
        }
        up = !up;
    }
}

async fn dial(
    a: &ClientArgs,
    name: &str,
    reconnect: bool,
    max_reconnects: Option<u32>,
) -> mitto::Result<Client> {
    let mut o = ClientOptions::new()
        .name(name)
        .timeout(a.timeout)
        .connect_timeout(a.timeout)
        .reconnect(reconnect)
        .max_reconnects(max_reconnects)
        .backoff(Duration::from_millis(50), Duration::from_secs(1));
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(p)) => Some(read_secret(p)?),
        (None, None) => None,
    };
    if let Some(t) = token {
        o = o.token(t);
    }
    let password = match (&a.password, &a.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(read_secret(f)?),
        (None, None) => None,
    };
    if let (Some(u), Some(p)) = (&a.user, password) {
        o = o.user_password(u.clone(), p);
    }
    Client::connect(&a.url, o).await
}

fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("0x{}", hex::encode(b)),
    }
}

/// A header's value as a person reads it: times as durations, counts as numbers.
fn header_text(key: HeaderKey<'_>, v: &[u8]) -> String {
    let number = || <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes);
    let readable = match key {
        HeaderKey::Known(WellKnown::Deadline) => number().map(Duration::from_micros),
        HeaderKey::Known(WellKnown::Ttl) => number().map(Duration::from_millis),
        HeaderKey::Known(WellKnown::DeliveryCount) => {
            return <[u8; 4]>::try_from(v)
                .map(|b| u32::from_be_bytes(b).to_string())
                .unwrap_or_else(|_| text(v));
        }
        _ => None,
    };
    match readable {
        Some(d) => humantime::format_duration(d).to_string(),
        None => text(v),
    }
}

fn headers_json(h: &Headers) -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .map(|(k, v)| (k.name().into_owned(), header_text(k, v).into()))
        .collect();
    serde_json::Value::Object(m)
}

/// The server's configuration: the embedded defaults, then the file, then the flags.
fn server_config(a: &ServerArgs) -> Result<BrokerConfig, String> {
    let a = a.clone();
    let mut cfg = match &a.config {
        Some(p) => BrokerConfig::from_file(p).map_err(|e| e.to_string())?,
        None => BrokerConfig::default(),
    };
    if !a.listen.is_empty() {
        cfg.listen = a.listen;
    }
    if let Some(m) = a.monitor {
        cfg.monitor = m;
    }
    if a.monitor_token.is_some() {
        cfg.monitor_token = a.monitor_token;
    }
    if let Some(n) = a.max_payload {
        cfg.max_payload = n;
    }
    if let Some(n) = a.max_connections {
        cfg.max_connections = n;
    }
    if let Some(n) = a.max_subscriptions {
        cfg.max_subscriptions = n;
    }
    if let Some(n) = a.max_pending_bytes {
        cfg.max_pending_bytes = n;
    }
    if let Some(p) = a.slow_consumer {
        cfg.slow_consumer = p;
    }
    if let Some(ms) = a.shutdown_drain_ms {
        cfg.shutdown_drain_ms = ms;
    }
    if a.token.is_some() {
        cfg.token = a.token;
        cfg.token_file = None;
    }
    if a.token_file.is_some() {
        cfg.token_file = a.token_file;
        cfg.token = None;
    }
    if let Some(us) = a.busy_poll_us {
        cfg.busy_poll_us = us;
    }
    if let Some(us) = a.spin_us {
        cfg.spin_us = us;
    }
    // An explicit data directory here; the default is decided when the broker starts.
    let config = a.config.as_deref();
    cfg.data_dir = match (a.data_dir, cfg.data_dir.take()) {
        (Some(d), _) => Some(d),
        (None, Some(d)) => Some(stream::resolve(config, d)),
        (None, None) => None,
    };
    Ok(cfg)
}

async fn server(mut cfg: BrokerConfig, config: Option<PathBuf>) -> Result<(), String> {
    let explicit = cfg.data_dir.is_some();
    if !explicit {
        cfg.data_dir = Some(stream::default_data_dir(config.as_deref()));
    }
    let started = match Broker::start(cfg.clone()).await {
        // The default folder taken by another broker (brokers side by side, tests): this one
        // runs without streams rather than not at all.
        Err(e) if !explicit && cfg.streams.is_empty() && e.status() == Status::ALREADY_EXISTS => {
            eprintln!("mitto: {}; streams are off in this broker", e.message());
            cfg.data_dir = None;
            Broker::start(cfg.clone()).await
        }
        r => r,
    };
    let broker = started.map_err(|e| e.message().to_owned())?;
    let data_dir = cfg.data_dir.clone();
    for url in broker.urls() {
        println!("mitto broker listening on {url}");
    }
    if let Some(m) = broker.monitor_addr() {
        println!("monitoring on http://{m}/ (lists the pages: /varz, /metrics, ...)");
    }
    match &data_dir {
        Some(d) => println!("streams kept in {}", d.display()),
        None => println!("streams off (no data directory)"),
    }
    wait_for_signal().await;
    println!("shutting down");
    broker.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn publish(a: PubArgs) -> Result<(), Failure> {
    let c = open(&a.client, "mitto-pub").await?;
    let payload = Bytes::from(a.data);
    let mut opts = PublishOptions::new();
    opts.headers = headers(&a.headers)?;
    opts.urgent = a.urgent;
    opts.ack = a.ack;
    for _ in 0..a.count {
        c.publish_with(&a.subject, payload.clone(), opts.clone())
            .await?;
    }
    c.flush().await?;
    if a.client.json {
        println!(
            "{}",
            serde_json::json!({"subject": a.subject, "published": a.count})
        );
    } else {
        println!("published {} message(s) to {}", a.count, a.subject);
    }
    c.close().await;
    Ok(())
}

async fn subscribe(a: SubArgs) -> Result<(), Failure> {
    if let Some(s) = a.stream.clone() {
        return stream::consume(a, &s).await.map_err(Failure::from);
    }
    let subject = a.subject.clone().unwrap_or_default();
    let (c, _watch) = open_lasting(&a.client, "mitto-sub", a.max_reconnects).await?;
    let opts = SubscribeOptions {
        delivery: if a.ack {
            Delivery::AtLeastOnce
        } else {
            Delivery::AtMostOnce
        },
        queue: a.queue.clone(),
        durable: a.durable.clone(),
        ..SubscribeOptions::default()
    };
    let mut sub = c.subscribe_with(&subject, opts).await?;
    if !a.client.json {
        eprintln!("listening on {subject}");
    }
    let mut n = 0u64;
    while a.count.is_none_or(|max| n < max) {
        let Some(m) = sub.next().await else { break };
        n += 1;
        if a.client.json {
            println!(
                "{}",
                serde_json::json!({"subject": m.subject(), "payload": text(m.payload()),
                    "headers": headers_json(m.headers()), "urgent": m.is_urgent(),
                    "delivery_count": m.delivery_count()})
            );
        } else if m.is_redelivered() {
            println!(
                "[#{n}] {}: {} (delivery {})",
                m.subject(),
                text(m.payload()),
                m.delivery_count()
            );
        } else {
            println!("[#{n}] {}: {}", m.subject(), text(m.payload()));
        }
        if a.headers && !a.client.json {
            for (k, v) in m.headers().iter() {
                println!("  {}: {}", k.name(), header_text(k, v));
            }
        }
        // Printed first: a crash between the two delivers it again, it is never lost.
        sub.ack(&m);
    }
    gave_up(&c)?;
    drop(sub);
    c.close().await;
    Ok(())
}

async fn request(a: ReqArgs) -> Result<(), Failure> {
    let c = open(&a.client, "mitto-req").await?;
    let mut o = CallOptions::new().timeout(a.client.timeout);
    o.headers = headers(&a.headers)?;
    let r = c.request_with(&a.subject, Bytes::from(a.data), o).await?;
    if a.client.json {
        println!(
            "{}",
            serde_json::json!({"payload": text(&r.payload), "headers": headers_json(&r.headers)})
        );
    } else {
        println!("{}", text(&r.payload));
    }
    c.close().await;
    Ok(())
}

async fn run_command(cmd: &str, input: &[u8]) -> mitto::Result<Bytes> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| mitto::Error::execution(format!("cannot run {cmd:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| mitto::Error::execution(format!("{cmd:?}: {e}")))?;
    Ok(Bytes::from(out.stdout))
}

async fn reply(a: ReplyArgs) -> Result<(), Failure> {
    if !a.echo && a.command.is_none() {
        return Err(Failure::new(exit::USAGE, "choose --echo or --command CMD"));
    }
    let (c, _watch) = open_lasting(&a.client, "mitto-reply", a.max_reconnects).await?;
    let mut sub = match &a.queue {
        Some(q) => c.queue_subscribe(&a.subject, q).await?,
        None => c.subscribe(&a.subject).await?,
    };
    if !a.client.json {
        eprintln!("answering {}", a.subject);
    }
    let mut n = 0u64;
    while a.count.is_none_or(|max| n < max) {
        let Some(m) = sub.next().await else { break };
        if m.reply_to().is_none() {
            continue;
        }
        n += 1;
        let answer = match &a.command {
            Some(cmd) => run_command(cmd, m.payload()).await?,
            None => m.payload().clone(),
        };
        if let Err(e) = c.respond(&m, answer.clone()).await {
            // The connection went away mid-request: its caller retries or times out.
            eprintln!("mitto: could not answer a request on {}: {e}", m.subject());
            continue;
        }
        if a.client.json {
            println!(
                "{}",
                serde_json::json!({"subject": m.subject(), "request": text(m.payload()), "reply": text(&answer)})
            );
        } else {
            println!(
                "[#{n}] {}: {} -> {}",
                m.subject(),
                text(m.payload()),
                text(&answer)
            );
        }
    }
    gave_up(&c)?;
    c.flush().await?;
    drop(sub);
    c.close().await;
    Ok(())
}

/// A subscription of a lasting command ended: a failure if the client gave up reconnecting
/// (`--max-reconnects`), not the end the command asked for.
fn gave_up(c: &Client) -> Result<(), Failure> {
    match c.close_error() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn stats(a: ClientArgs) -> Result<(), Failure> {
    let c = open(&a, "mitto-stats").await?;
    let s = c.stats().await?;
    if a.json {
        println!("{}", serde_json::to_string(&s.values).unwrap_or_default());
    } else {
        let w = s.values.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &s.values {
            println!("{k:<w$}  {v}");
        }
    }
    c.close().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match &cli.cmd {
        Cmd::Server(a) => a.log.clone(),
        _ => std::env::var("MITTO_LOG").unwrap_or_else(|_| "warn".into()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour codes only for a person: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // The server's configuration is read first: in latency mode it runs on one thread.
    let server_cfg = match &cli.cmd {
        Cmd::Server(a) => match server_config(a) {
            Ok(cfg) => Some(cfg),
            Err(e) => return Failure::from(e).exit(),
        },
        _ => None,
    };
    let mut builder = match &server_cfg {
        Some(cfg) if cfg.busy_poll_us > 0 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mitto: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(a) => match server_cfg {
                Some(cfg) => server(cfg, a.config).await.map_err(Failure::from),
                None => Err(Failure::from("no server configuration".to_owned())),
            },
            Cmd::Pub(a) => publish(a).await,
            Cmd::Sub(a) => subscribe(a).await,
            Cmd::Req(a) => request(a).await,
            Cmd::Reply(a) => reply(a).await,
            Cmd::Stats(a) => stats(a).await,
            Cmd::Bench(a) => bench::run(a).await.map_err(Failure::from),
            Cmd::Stream(c) => stream::run(c).await.map_err(Failure::from),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

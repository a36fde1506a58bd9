//! Opening a connection: transport, HELLO, and the driver with its handles.

use super::calls::Calls;
use super::options::ClientOptions;
use super::queue::CmdTx;
use super::reactor::ClientReactor;
use super::{Conn, SubTable};
use crate::conn::{Driver, Lane};
use crate::error::{Error, Result};
use crate::handshake;
use crate::transport::{self, Endpoint};
use mitto_proto::{Hello, Status};
use std::sync::Arc;
use tokio::sync::mpsc;

pub(crate) fn hello(opts: &ClientOptions) -> Hello {
    Hello {
        client_id: opts.client_id.clone(),
        user: opts.user.clone(),
        auth: opts.auth.clone(),
        ..opts.conn.hello()
    }
}

/// Connects, shakes hands, and returns the driver to run and the handle to it.
pub(super) async fn open(
    endpoint: &Endpoint,
    opts: &ClientOptions,
    table: &SubTable,
    session: &std::sync::Mutex<String>,
) -> Result<(Driver<ClientReactor>, Conn, bool)> {
    let setup = async {
        let mut io = transport::connect(endpoint, opts.tls.as_ref()).await?;
        let mut offer = hello(opts);
        if let Ok(s) = session.lock() {
            offer.session = s.clone();
        }
        let (agreed, server, leftover) =
            handshake::client(&mut io, &offer, opts.connect_timeout).await?;
        let resumed = !offer.session.is_empty() && server.flags & Hello::RESUMED != 0;
        if let Ok(mut s) = session.lock() {
            *s = server.session.clone();
        }
        Ok::<_, Error>((io, agreed, leftover, resumed))
    };
    let (io, agreed, leftover, resumed) = tokio::time::timeout(opts.connect_timeout, setup)
        .await
        .map_err(|_| {
            Error::new(
                Status::TIMEOUT,
                format!("connecting to {endpoint} timed out"),
            )
            .retryable()
        })??;
    // At least two: a command and the publishes buffered before it enter together.
    let (cmds_tx, cmds_rx) = mpsc::channel(opts.conn.queue_capacity.max(2));
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let port = match &io {
        transport::Io::Link(l) => l.port(),
        _ => None,
    };
    let bytes = !matches!(io, transport::Io::Link(_));
    let calls = bytes.then(|| Arc::new(Calls::new(opts.conn.queue_capacity)));
    let cfg = opts.conn.driver_config(&agreed);
    let driver = Driver::new(
        io,
        leftover,
        cfg,
        ClientReactor::new(table.clone(), calls.clone()),
        cmds_rx,
        ctl_rx,
    );
    // A socket's unary calls go through the call table; only an in-process link has a lane
    // (so a socket's driver locks no lane on each turn).
    let lane = calls
        .is_none()
        .then(|| Arc::new(Lane::new(opts.conn.queue_capacity)));
    let driver = match &lane {
        Some(l) => driver.with_lane(l.clone()),
        None => driver,
    };
    Ok((
        driver,
        Conn {
            cmds: CmdTx::new(cmds_tx, calls.clone()),
            lane,
            ctl: ctl_tx,
            agreed: Arc::new(agreed),
            port,
            calls,
        },
        resumed,
    ))
}

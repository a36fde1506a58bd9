//! HEALTH and STATS queries.

use super::call::CancelGuard;
use super::cmd::{CallCmd, Slot};
use super::{Client, Cmd};
use crate::error::{Error, Result};
use bytes::Bytes;
use mitto_proto::{Frame, HealthReport, StatsReport, Status};
use tokio::sync::oneshot;
use tokio::time::Instant;

impl Client {
    async fn query(&self, frame_of: fn(u64) -> Frame) -> Result<Bytes> {
        let deadline = Instant::now() + self.opts().timeout;
        let conn = self.conn(deadline).await?;
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        conn.cmds
            .send(Cmd::call(CallCmd {
                id,
                frame: frame_of(id),
                slot: Slot::Unary(tx),
                deadline: None,
            }))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))?;
        let mut guard = CancelGuard {
            id,
            ctl: conn.ctl.clone(),
            armed: true,
        };
        let r = tokio::time::timeout_at(deadline, rx).await;
        guard.armed = false;
        match r {
            Ok(Ok(r)) => r.map(|r| r.payload),
            Ok(Err(_)) => Err(Error::connection_lost("connection closed")),
            Err(_) => Err(Error::new(Status::TIMEOUT, "no answer in time")),
        }
    }

    /// Asks the server for its health (a HEALTH frame): its state and uptime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// let health = client.health().await?;
    /// assert_eq!(health.state, mitto::HealthState::Serving);
    /// # Ok(()) }
    /// ```
    pub async fn health(&self) -> Result<HealthReport> {
        let b = self.query(Frame::health_query).await?;
        HealthReport::decode(&b).map_err(|k| Error::new(Status::PROTOCOL_ERROR, k.to_string()))
    }

    /// Asks the server for its counters (a STATS frame).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// let stats = client.stats().await?;
    /// println!("{} calls so far", stats.values["calls_total"]);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<StatsReport> {
        let b = self.query(Frame::stats_query).await?;
        StatsReport::decode(&b).map_err(|k| Error::new(Status::PROTOCOL_ERROR, k.to_string()))
    }
}

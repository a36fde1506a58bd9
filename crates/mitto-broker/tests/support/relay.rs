//! A TCP relay between a client and the broker, for tests of lost connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A TCP relay to the broker whose connections the test can cut (the client sees a lost
/// connection and reconnects through it), and which refuses new ones while `shut`.
pub(crate) struct Relay {
    pub(crate) url: String,
    pub(crate) cut: Arc<tokio::sync::Notify>,
    pub(crate) shut: Arc<AtomicBool>,
}

pub(crate) async fn relay(target: &str) -> Relay {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let target = target.trim_start_matches("tcp://").to_owned();
    let cut = Arc::new(tokio::sync::Notify::new());
    let shut = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (cut.clone(), shut.clone());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            if s2.load(Ordering::SeqCst) {
                continue;
            }
            let target = target.clone();
            let cut = c2.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.notified() => {}
                }
            });
        }
    });
    Relay { url, cut, shut }
}

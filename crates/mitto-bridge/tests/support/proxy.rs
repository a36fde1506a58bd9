//! A TCP proxy on loopback that a test cuts (every connection closed, new ones refused) and
//! restores: a backend outage without touching the machine's shared service.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct Proxy {
    /// The port clients connect to.
    pub(crate) port: u16,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` (chosen) to 127.0.0.1:`target`.
    pub(crate) async fn start(target: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (up, up_rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut inside, _)) = l.accept().await {
                if !*up_rx.borrow() {
                    continue;
                }
                let mut up = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outside) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inside, &mut outside) => {}
                        _ = up.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        Proxy { port, up, task }
    }

    /// Closes every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Takes connections again.
    pub(crate) fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

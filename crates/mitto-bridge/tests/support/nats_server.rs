//! nats-server processes of a test's own, on free loopback ports, alone or clustered.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether the `nats-server` binary runs here; prints a loud SKIPPED line when it does not.
pub(crate) fn available() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("\n*** SKIPPED: no nats-server binary to run servers of the test's own ***\n");
    }
    ok
}

/// One nats-server; killed when dropped.
pub(crate) struct NatsServer {
    child: Option<Child>,
    args: Vec<String>,
    /// Its client port.
    pub(crate) port: u16,
}

impl NatsServer {
    /// A server on a free port; `store` turns JetStream on, stored there.
    pub(crate) fn start(store: Option<&std::path::Path>) -> NatsServer {
        let port = super::free_port();
        let mut args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        if let Some(dir) = store {
            args.extend(["-js".into(), "-sd".into(), dir.display().to_string()]);
        }
        Self::spawn(args, port)
    }

    /// `n` servers clustered with each other over loopback routes.
    pub(crate) fn cluster(n: usize, name: &str) -> Vec<NatsServer> {
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (super::free_port(), super::free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, r)| format!("nats://127.0.0.1:{r}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, (port, route))| {
                let args = vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-n".into(),
                    format!("{name}-{i}"),
                    "--cluster_name".into(),
                    name.to_owned(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    routes.clone(),
                ];
                Self::spawn(args, *port)
            })
            .collect()
    }

    fn spawn(args: Vec<String>, port: u16) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            args,
            port,
        };
        s.restart();
        s
    }

    /// The client URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) and waits (at most 10 s) until it takes connections.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server on port {} did not start", self.port);
    }

    /// Kills it with SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

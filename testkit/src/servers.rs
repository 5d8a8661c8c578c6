//! Private servers a test or the chaos run may stop, kill and restart without touching the shared
//! local services: a Kafka broker, a Redis with persistence and the log store's server, each
//! on its own free loopback ports and data folder, plus a TCP proxy that makes a server slow or
//! stalls it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::{repo_root, unique};

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port()
}

/// Which server a [`PrivateServer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Single-node KRaft Kafka, through `dev/services kafka-foreground`.
    Kafka,
    /// Redis with the append-only file on (`appendfsync everysec`) and `maxmemory-policy
    /// volatile-ttl`, like the local service.
    Redis,
    /// The log store's server that the local service runs: the one `MONGO_SERVER` names, as in
    /// `dev/services` (secantus-mdb unless it says `ferretdb`).
    Mongo,
    /// secantus-mdb (`secantusd-rs`: the MongoDB wire protocol over WiredTiger), standalone, with a
    /// 1 GB cache, like the local service.
    Secantus,
    /// FerretDB with the SQLite backend, like the local service with `MONGO_SERVER=ferretdb`.
    Ferretdb,
}

impl Kind {
    /// The server a kind runs: [`Kind::Mongo`] becomes the one `MONGO_SERVER` names.
    pub fn resolved(self) -> Kind {
        match (self, std::env::var("MONGO_SERVER").as_deref()) {
            (Kind::Mongo, Ok("ferretdb")) => Kind::Ferretdb,
            (Kind::Mongo, Ok("secantus" | "") | Err(_)) => Kind::Secantus,
            (Kind::Mongo, Ok(other)) => panic!("MONGO_SERVER must be secantus or ferretdb, got {other:?}"),
            (kind, _) => kind,
        }
    }

    /// The server's name, as reports say it.
    pub fn name(self) -> &'static str {
        match self.resolved() {
            Kind::Kafka => "Kafka",
            Kind::Redis => "Redis",
            Kind::Secantus | Kind::Mongo => "secantus-mdb",
            Kind::Ferretdb => "FerretDB",
        }
    }
}

/// A program `dev/services` installs in `$BANDVOTE_CACHE/bin`.
fn cached_program(name: &str) -> PathBuf {
    let cache = std::env::var("BANDVOTE_CACHE").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/bandvote")
    });
    cache.join("bin").join(name)
}

/// One private server process with its folder; restartable on the same port and data.
pub struct PrivateServer {
    kind: Kind,
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    extra_args: Vec<String>,
    process: Option<Child>,
}

impl PrivateServer {
    /// Starts the server and waits until it takes connections.
    pub fn start(kind: Kind) -> Self {
        Self::start_with(kind, &[])
    }

    /// Starts the server with more command-line arguments (for Redis, settings such as
    /// `--maxmemory 4mb`), kept for every restart.
    pub fn start_with(kind: Kind, extra_args: &[&str]) -> Self {
        let kind = kind.resolved();
        let dir = std::env::temp_dir().join(unique(&format!("{kind:?}").to_lowercase()));
        std::fs::create_dir_all(&dir).expect("server folder");
        let extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let mut server =
            PrivateServer { kind, dir, port: free_port(), controller_port: free_port(), extra_args, process: None };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it runs (never [`Kind::Mongo`]: that is resolved when the server is made).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's data folder (Redis keeps its append-only files in `appendonlydir/` here).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL clients use: brokers for Kafka, `redis://` or `mongodb://`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Kafka => self.address(),
            Kind::Redis => format!("redis://{}", self.address()),
            Kind::Mongo | Kind::Secantus | Kind::Ferretdb => format!("mongodb://{}/", self.address()),
        }
    }

    fn command(&self) -> Command {
        let dir = self.dir.display().to_string();
        match self.kind {
            Kind::Kafka => {
                let mut command = Command::new(repo_root().join("dev/services"));
                command.args(["kafka-foreground", &dir, &self.port.to_string(), &self.controller_port.to_string()]);
                command
            }
            Kind::Redis => {
                let mut command = Command::new("redis-server");
                command.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--dir", &dir]);
                command.args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]);
                command.args(["--maxmemory-policy", "volatile-ttl"]);
                command
            }
            Kind::Mongo => unreachable!("resolved when the server was made"),
            Kind::Ferretdb => {
                let mut command = Command::new(cached_program("ferretdb"));
                std::fs::create_dir_all(self.dir.join("data")).expect("data folder");
                command.env("FERRETDB_TELEMETRY", "disable").env("DO_NOT_TRACK", "1").args([
                    format!("--listen-addr=127.0.0.1:{}", self.port),
                    "--handler=sqlite".into(),
                    format!("--sqlite-url=file:{dir}/data/"),
                    format!("--state-dir={dir}"),
                    "--telemetry=disable".into(),
                    "--test-telemetry-url=http://127.0.0.1:9/".into(),
                    "--debug-addr=-".into(),
                    "--log-level=warn".into(),
                ]);
                command
            }
            Kind::Secantus => {
                // An empty configuration file: without one it reads ./secantusd.toml or ~/.secantus/.
                let config = self.dir.join("secantusd.toml");
                std::fs::write(&config, "").expect("configuration file");
                let mut command = Command::new(cached_program("secantusd-rs"));
                command.arg("--config").arg(config).args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
                command.args(["--storage-path", &format!("{dir}/data"), "--standalone", "--cache-size", "1G"]);
                // What survives a SIGKILL is what was acknowledged only with this (dev/services).
                command.arg("--sync-on-commit");
                command.args(["--log-level", "WARNING"]);
                command
            }
        }
    }

    /// Starts the server (again) on its port and folder and waits until it takes connections.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "{:?} is already running", self.kind);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .expect("log file");
        let child = self
            .command()
            .args(&self.extra_args)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{:?} does not start ({e}); run dev/services install (or install-secantus, install-ferretdb)",
                    self.kind
                )
            });
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not start; see {}.log", self.kind, self.dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    /// Kills the server and removes its folder; its log stays when `BANDVOTE_KEEP_LOGS` is set.
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::env::var_os("BANDVOTE_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(self.dir.with_extension("log"));
        }
    }
}

/// A TCP proxy in front of a server that can hold every byte back (stall) or delay each chunk, to
/// make a store as slow as a run needs.
pub struct SlowProxy {
    pub addr: SocketAddr,
    state: tokio::sync::watch::Sender<Slowness>,
}

/// How a [`SlowProxy`] treats the bytes it passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slowness {
    pub stalled: bool,
    /// Added before each chunk passes, both ways.
    pub delay: Duration,
    /// Raised by [`SlowProxy::sever`]: connections opened before it are closed.
    pub severed: u64,
}

impl SlowProxy {
    /// Listens on a free port and forwards every connection to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (state, watch) = tokio::sync::watch::channel(Slowness::default());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // A server that is down refuses the client too: the client sees a closed connection.
                let Ok(upstream) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = upstream.into_split();
                tokio::spawn(Self::pipe(client_read, server_write, watch.clone()));
                tokio::spawn(Self::pipe(server_read, client_write, watch.clone()));
            }
        });
        SlowProxy { addr, state }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut state: tokio::sync::watch::Receiver<Slowness>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = vec![0; 64 * 1024];
        let opened = state.borrow().severed;
        loop {
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = state.wait_for(|s| s.severed != opened) => return,
            };
            let Ok(n) = read else { return };
            if n == 0 {
                return;
            }
            // Bytes held back by a stall are dropped, not delivered, when the connection is severed.
            let Ok(now) = state.wait_for(|s| !s.stalled || s.severed != opened).await.map(|s| *s) else { return };
            if now.severed != opened {
                return;
            }
            if !now.delay.is_zero() {
                tokio::time::sleep(now.delay).await;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }

    pub fn stall(&self, stalled: bool) {
        self.state.send_modify(|s| s.stalled = stalled);
    }

    pub fn delay(&self, delay: Duration) {
        self.state.send_modify(|s| s.delay = delay);
    }

    /// Closes every connection open now, dropping the bytes a stall holds back on them, as when a
    /// client's process dies with its requests still in the network.
    pub fn sever(&self) {
        self.state.send_modify(|s| s.severed += 1);
    }
}

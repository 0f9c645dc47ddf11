//! `weir bench --embedded`: a broker inside the bench process, on its own runtime and
//! threads (named `weir-srv…`, so the bench can tell its CPU time from the broker's), with
//! a temporary data directory and a loopback port chosen by the kernel.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use tokio::sync::oneshot;

/// Prefix of the embedded broker's thread names.
pub const THREAD_PREFIX: &str = "weir-srv";
/// Worker threads of the embedded broker's runtime: the size `weir server` gets on a
/// 2-core machine.
const WORKER_THREADS: usize = 2;

/// A running embedded broker; [`Embedded::stop`] shuts it down gracefully.
#[derive(Debug)]
pub struct Embedded {
    pub addr: SocketAddr,
    /// Its Kafka listener.
    pub kafka_addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Removed when dropped (unless the user chose the directory).
    _dir: Option<tempfile::TempDir>,
}

impl Embedded {
    /// Starts a broker on `127.0.0.1:0` with its data in `data_dir` (default: a new
    /// temporary directory under the system's temp dir, removed at the end).
    pub async fn start(data_dir: Option<PathBuf>) -> Result<Embedded> {
        let (dir, path) = match data_dir {
            Some(p) => (None, p),
            None => {
                let d = tempfile::Builder::new()
                    .prefix("weir-bench-")
                    .tempdir()
                    .context("cannot create a temporary data directory")?;
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        let config = weir_server::Config {
            data_dir: path.clone(),
            native_addr: "127.0.0.1:0".into(),
            kafka_addr: "127.0.0.1:0".into(),
            log_level: "warn".into(),
            ..weir_server::Config::default()
        };
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(SocketAddr, SocketAddr)>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}-main"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKER_THREADS)
                    .thread_name(THREAD_PREFIX)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("cannot start the broker runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let server = match weir_server::Server::bind(config).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(
                                anyhow::Error::new(e).context("cannot start the broker")
                            ));
                            return;
                        }
                    };
                    let Some(kafka_addr) = server.kafka_addr() else {
                        let _ = ready_tx.send(Err(anyhow!("the embedded Kafka listener is off")));
                        return;
                    };
                    let _ = ready_tx.send(Ok((server.native_addr(), kafka_addr)));
                    if let Err(e) = server
                        .run(async {
                            let _ = stop_rx.await;
                        })
                        .await
                    {
                        eprintln!("weir bench: embedded broker failed: {e}");
                    }
                });
            })
            .context("cannot start the broker thread")?;
        let (addr, kafka_addr) = ready_rx
            .await
            .map_err(|_| anyhow!("the embedded broker stopped while starting"))??;
        Ok(Embedded {
            addr,
            kafka_addr,
            data_dir: path,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// Shuts the broker down (in-flight requests finish, logs are synced and closed).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

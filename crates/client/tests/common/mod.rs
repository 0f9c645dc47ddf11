//! A real server in-process on 127.0.0.1:0 over a temporary data directory, shared by
//! the SDK's integration tests.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::sync::oneshot;
use weir_client::{Client, ClientConfig};

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), weir_server::ServerError>>,
    _dir: tempfile::TempDir,
}

/// Defaults, with the native listener on an ephemeral loopback port and every other
/// listener (`*_addr`: Kafka, HTTP …) too, so that tests running at once never collide
/// on a fixed port; fsync off for speed.
fn test_config(data_dir: &std::path::Path) -> weir_server::Config {
    let mut v = serde_json::to_value(weir_server::Config::default()).expect("config to json");
    let obj = v.as_object_mut().expect("config is a table");
    for (key, value) in obj.iter_mut() {
        if key.ends_with("_addr") {
            *value = "127.0.0.1:0".into();
        }
    }
    obj.insert(
        "data_dir".into(),
        data_dir.to_str().expect("utf-8 path").into(),
    );
    if let Some(d) = obj
        .get_mut("topic_defaults")
        .and_then(|d| d.as_object_mut())
    {
        d.insert("fsync".into(), "never".into());
    }
    serde_json::from_value(v).expect("config from json")
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(&dir.path().join("data"));
        let server = weir_server::Server::bind(config).await.expect("bind");
        let addr = server.native_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr.to_string(), ClientConfig::default())
            .await
            .expect("connect")
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        self.task.await.expect("join").expect("clean shutdown");
    }
}

pub async fn create(client: &Client, name: &str, partitions: u32) {
    client
        .admin()
        .create_topic(name, partitions, HashMap::new())
        .await
        .expect("create topic");
}

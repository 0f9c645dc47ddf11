//! Creates a topic, lists and describes topics, then deletes it.
//!
//! Run a server (`weir server`), then: `cargo run -p weir-client --example admin`.
//! The address comes from `WEIR_ADDR` (default 127.0.0.1:6086).

use std::collections::HashMap;

use weir_client::{Client, ClientConfig, ClientError};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::var("WEIR_ADDR").unwrap_or_else(|_| "127.0.0.1:6086".into());
    let client = Client::connect(addr, ClientConfig::default()).await?;
    let info = client.server_info().await?;
    println!(
        "connected to weir {} (node {})",
        info.server_version, info.node_id
    );
    let admin = client.admin();
    let configs = HashMap::from([("fsync".to_owned(), "always".to_owned())]);
    let topic = admin.create_topic("example-admin", 3, configs).await?;
    println!(
        "created {} ({}) with {} partitions",
        topic.name, topic.id, topic.partition_count
    );
    for t in admin.list_topics().await? {
        println!("topic {} partitions={}", t.name, t.partition_count);
    }
    let d = admin.describe_topic("example-admin").await?;
    for p in &d.partitions {
        println!(
            "  partition {}: offsets {}..{} ({} bytes)",
            p.partition, p.log_start_offset, p.log_end_offset, p.size_bytes
        );
    }
    admin.delete_topic("example-admin").await?;
    println!("deleted example-admin");
    Ok(())
}

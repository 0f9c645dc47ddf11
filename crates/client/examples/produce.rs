//! Sends records with each send style, then flushes.
//!
//! Run a server (`weir server`) and create the topic (`weir topic create example -p 3`),
//! then: `cargo run -p weir-client --example produce`. The address comes from `WEIR_ADDR`
//! (default 127.0.0.1:6086).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use weir_client::{Client, ClientConfig, ClientError, ProducerConfig, ProducerRecord};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::var("WEIR_ADDR").unwrap_or_else(|_| "127.0.0.1:6086".into());
    let client = Client::connect(addr, ClientConfig::default()).await?;
    let mut config = ProducerConfig::default();
    config.linger_ms = 10;
    let producer = client.producer(config)?;

    // Sync: one record, waiting for its acknowledgement.
    let md = producer
        .send(
            ProducerRecord::new("example")
                .with_key("user-1")
                .with_value("signed up"),
        )
        .await?;
    println!("sync: partition {} offset {}", md.partition, md.offset);

    // Async: enqueue a thousand, then collect the acknowledgements.
    let acks: Vec<_> = (0..1000)
        .map(|i| {
            producer.send_async(
                ProducerRecord::new("example")
                    .with_key(format!("user-{}", i % 10))
                    .with_value(format!("event {i}"))
                    .with_header("source", "example"),
            )
        })
        .collect();
    for ack in acks {
        ack.await?;
    }
    println!("async: 1000 acknowledged");

    // Callback: count acknowledgements without holding futures.
    let acked = Arc::new(AtomicU64::new(0));
    for i in 0..1000 {
        let acked = acked.clone();
        producer
            .send_with_callback(
                ProducerRecord::new("example").with_value(format!("cb {i}")),
                move |r| {
                    if r.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await;
    }
    producer.flush().await;
    println!("callback: {} acknowledged", acked.load(Ordering::Relaxed));

    // One-way: no acknowledgement at all.
    producer
        .send_oneway(ProducerRecord::new("example").with_value("fire and forget"))
        .await?;
    producer.close().await;
    Ok(())
}

//! Reads a topic from the beginning with `poll`, then follows it in push mode until
//! Ctrl-C.
//!
//! Run a server and the `produce` example first, then:
//! `cargo run -p weir-client --example consume`. The address comes from `WEIR_ADDR`
//! (default 127.0.0.1:6086).

use std::time::Duration;

use weir_client::{CancellationToken, Client, ClientConfig, ClientError, ConsumerConfig, SeekTo};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::var("WEIR_ADDR").unwrap_or_else(|_| "127.0.0.1:6086".into());
    let client = Client::connect(addr, ClientConfig::default()).await?;
    let mut consumer = client.consumer(ConsumerConfig::default())?;
    for p in consumer.assign_all("example").await? {
        consumer.seek("example", p, SeekTo::Beginning).await?;
    }

    // Pull: drain what is there.
    loop {
        let records = consumer.poll(Duration::from_millis(500)).await?;
        if records.is_empty() {
            break;
        }
        for r in records {
            let value = r.value.as_deref().map(String::from_utf8_lossy);
            println!("{}/{}@{} {:?}", r.topic, r.partition, r.offset, value);
        }
    }

    // Push: each batch is handled before the next fetch; Ctrl-C stops.
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    println!("following; Ctrl-C to stop");
    consumer
        .run(stop, |batch| async move {
            for r in batch {
                println!(
                    "{}/{}@{} ({} bytes)",
                    r.topic,
                    r.partition,
                    r.offset,
                    r.value.map_or(0, |v| v.len())
                );
            }
            Ok::<(), std::io::Error>(())
        })
        .await
}

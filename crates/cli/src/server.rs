//! `weir server`: load the configuration, apply flags, serve until SIGTERM / SIGINT.

use anyhow::{Context, Result};

use crate::args::ServerArgs;

pub async fn run(args: ServerArgs) -> Result<()> {
    let mut config = weir_server::Config::load(args.config.as_deref())
        .context("cannot load the server configuration")?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = args.native_addr {
        config.native_addr = addr;
    }
    weir_server::init_tracing(&config.log_level);
    let server = weir_server::Server::bind(config)
        .await
        .context("cannot start the server")?;
    // Scripts and tests wait for these lines: the listeners accept connections from now on.
    println!("weir listening native={}", server.native_addr());
    if let Some(addr) = server.kafka_addr() {
        println!("weir listening kafka={addr}");
    }
    server
        .run(weir_server::shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
}

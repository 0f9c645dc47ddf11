//! `weir`: run a broker, manage topics, produce and consume.
//!
//! A thin binary over `weir-server` and `weir-client`: each subcommand lives in its own
//! module, errors travel as `anyhow` and are mapped once, in [`main`], to a one-line
//! message on stderr and an exit code (see `weir --help` for the table, `exit.rs` for
//! the mapping). A closed stdout (`weir consume t | head`) ends the command quietly.

mod args;
mod bench;
mod consume;
mod exit;
mod group;
mod produce;
mod server;
mod topic;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use weir_client::{Client, ClientConfig};

use crate::args::{Cli, Command};
use crate::exit::Exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for tasks still running (a reader blocked on stdin, for one).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: error: {}", exit::one_line(&e));
            ExitCode::from(exit::classify(&e) as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let connect = || async {
        let mut config = ClientConfig::default();
        config.client_id = "weir-cli".into();
        config.connect_timeout_ms = cli.timeout_ms;
        config.request_timeout_ms = cli.timeout_ms;
        Client::connect(cli.addr.clone(), config).await
    };
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Topic(cmd) => topic::run(&connect().await?, cmd).await,
        Command::Produce(args) => produce::run(&connect().await?, args).await,
        Command::Consume(args) => consume::run(&connect().await?, args).await,
        Command::Bench(args) => bench::run(&cli.addr, cli.timeout_ms, args).await,
        Command::Group(cmd) => group::run(&connect().await?, cmd).await,
    }
}

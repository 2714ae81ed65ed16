//! `relaysrv`: a Syncthing-compatible relay server (relay protocol v1) for
//! private networks, as a library. A program (the `relaysrv` binary, a
//! test, a container tool) builds a [`ServerConfig`], starts it with
//! [`Server::spawn`] and stops it with [`Server::shutdown`]; [`run`] is
//! what the binary does with its flags.

mod accepted;
pub mod access;
pub mod cli;
mod config;
#[doc(hidden)]
pub mod fuzzing;
mod limits;
mod listener;
mod metrics;
mod pairing;
mod pool;
mod protocol;
mod server;
mod splice;
mod state;
mod status;

pub use crate::cli::Cli;
pub use crate::config::{
    CapacityConfig, ConfigError, DeviceAccess, ExternalAddress, ForwarderKind, JoinTokens,
    ProvidedBy, ServerConfig,
};
pub use crate::server::{Server, SpawnError, STOP_DEADLINE};

/// The binary's life: flags to configuration, start, print the URI, wait
/// for SIGTERM or SIGINT, stop and await every task.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config()?;
    // Before the port opens: a SIGTERM from then on stops the relay cleanly.
    let mut signals = daemon::shutdown::Signals::install();
    let server = Server::spawn(config).await?;
    // Scripts read the URI from standard output.
    println!("{}", server.uri());
    signals.recv().await;
    match server.shutdown().await {
        Ok(()) => tracing::info!("relay stopped"),
        // Every task watches the stop, so this is a bug; the process
        // exits anyway and the open sockets close with it.
        Err(e) => tracing::warn!(error = %e, "relay stopped with tasks still running"),
    }
    Ok(())
}

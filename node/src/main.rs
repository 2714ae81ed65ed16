//! `node`: a Syncthing-compatible sync device.
//!
//! `node generate` creates the identity and configuration, `node serve`
//! runs the device: BEP connections, scanning, the persistent index and
//! serving folders to real Syncthing peers.

mod config;
mod conn;
mod connect;
mod db;
mod discovery;
mod events;
mod fileserve;
mod identity_cmd;
mod ignore;
mod model;
mod pull;
mod relay_client;
mod resolve;
mod rest;
mod scan;
mod serve;
mod watch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "node",
    version,
    about = "A Syncthing-compatible sync device for private networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the device ID of a certificate (like `syncthing --device-id`).
    DeviceId(identity_cmd::DeviceIdArgs),
    /// Create cert.pem and key.pem (unless they exist: an identity made by
    /// Syncthing is adopted) and a starting config.toml (unless it exists)
    /// in a home directory, and print the device ID.
    Generate(identity_cmd::GenerateArgs),
    /// Run the device: listen, dial configured devices, scan and serve
    /// folders, REST API.
    Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DeviceId(args) => identity_cmd::device_id(args),
        Command::Generate(args) => identity_cmd::generate(args),
        Command::Serve(args) => serve::serve(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

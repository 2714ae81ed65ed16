//! `node`: a Syncthing-compatible sync device.
//!
//! For now it manages the device identity; syncing arrives with the BEP
//! issues.

mod identity_cmd;

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
    /// Create cert.pem and key.pem in a home directory, unless they exist,
    /// and print the device ID.
    Generate(identity_cmd::GenerateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DeviceId(args) => identity_cmd::device_id(args),
        Command::Generate(args) => identity_cmd::generate(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

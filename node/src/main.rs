//! `node`: a Syncthing-compatible sync device.
//!
//! `node generate` creates the identity and configuration, `node serve`
//! runs the device: BEP connections, scanning, the persistent index and
//! serving folders to real Syncthing peers.

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
    DeviceId(node::identity_cmd::DeviceIdArgs),
    /// Create cert.pem and key.pem (unless they exist: an identity made by
    /// Syncthing is adopted) and a starting config.toml (unless it exists)
    /// in a home directory, and print the device ID.
    Generate(node::identity_cmd::GenerateArgs),
    /// Run the device: listen, dial configured devices, scan and serve
    /// folders, REST API.
    Serve(node::serve::ServeArgs),
}

/// glibc gives each thread that allocates its own arena (up to 8 per
/// core); freed memory is not shared between arenas, so a node serving
/// many small requests from its blocking threads grows its resident size
/// with the folder (peak RSS while a real device pulled 100,000 files:
/// 708 bytes per file with the default, 245 with two arenas; BENCHMARKS.md).
/// An explicit `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DeviceId(args) => node::identity_cmd::device_id(args),
        Command::Generate(args) => node::identity_cmd::generate(args),
        Command::Serve(args) => return node::serve::serve(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `relaysrv`: placeholder until its issue lands.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "relaysrv",
    version,
    about = "Syncthing-compatible relaysrv for private networks (not implemented yet)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("relaysrv: not implemented yet");
    std::process::exit(2);
}

//! `discosrv`: placeholder until its issue lands.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "discosrv",
    version,
    about = "Syncthing-compatible discosrv for private networks (not implemented yet)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("discosrv: not implemented yet");
    std::process::exit(2);
}

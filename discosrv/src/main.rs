//! `discosrv`: a global discovery server (protocol v3) for private
//! Syncthing networks. See `--help`; the server itself is the library.

use clap::Parser;
use discosrv::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    daemon::run_main(async move { discosrv::run(cli.into_config()?).await })
}

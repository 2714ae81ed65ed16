//! `relaysrv`: a Syncthing-compatible relay server (relay protocol v1) for
//! private networks. See `--help`, the README and `lib.rs`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = relaysrv::Cli::parse();
    cli.log.init();
    daemon::run_main(relaysrv::run(cli))
}

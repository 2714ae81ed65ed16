//! The node image's entrypoint: `node generate` (creates the identity and
//! a starting configuration only when they are missing, so restarts keep
//! them), then `exec node serve` with the given arguments. Both read their
//! settings from the environment (`NODE_HOME`, `NODE_LISTEN`,
//! `NODE_GUI_ADDRESS`, `NODE_GUI_APIKEY`, `NODE_NAME`, ...). The image has
//! no shell to say this in a script.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let node = std::env::var_os("NODE_BINARY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("node")))
        })
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/node"));
    match Command::new(&node).arg("generate").status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("node-entrypoint: `node generate` failed ({s}); is NODE_HOME writable by this user?");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("node-entrypoint: cannot run {}: {e}", node.display());
            return ExitCode::FAILURE;
        }
    }
    let err = Command::new(&node)
        .arg("serve")
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("node-entrypoint: cannot exec {}: {err}", node.display());
    ExitCode::FAILURE
}

//! `node device-id` and `node generate`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use proto::{DeviceId, Identity, KeyKind, LoadedOrGenerated};

#[derive(Args)]
pub struct DeviceIdArgs {
    /// Certificate file (PEM) whose device ID to print.
    #[arg(long, env = "NODE_CERT", value_name = "FILE", conflicts_with = "home")]
    cert: Option<PathBuf>,
    /// Home directory holding cert.pem (a Syncthing home directory works too).
    #[arg(long, env = "NODE_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Directory to hold cert.pem and key.pem; created if missing.
    #[arg(long, env = "NODE_HOME", value_name = "DIR")]
    home: PathBuf,
    /// Key type of a new certificate: ed25519 (as Syncthing 2.x) or
    /// ecdsa-p384 (as Syncthing 1.x). Both work with Syncthing 1.19.2 and later.
    #[arg(long, env = "NODE_KEY_TYPE", default_value_t = KeyKind::Ed25519)]
    key_type: KeyKind,
    /// Listen address for the new config.toml (repeatable), e.g.
    /// tcp://0.0.0.0:22000. Without it the node does not listen.
    #[arg(
        long = "listen",
        env = "NODE_LISTEN",
        value_name = "URI",
        value_delimiter = ','
    )]
    listen: Vec<String>,
    /// REST API address for the new config.toml.
    #[arg(long, env = "NODE_GUI_ADDRESS", value_name = "HOST:PORT")]
    gui_address: Option<String>,
    /// REST API key for the new config.toml (random if not given).
    #[arg(long, env = "NODE_GUI_APIKEY", value_name = "KEY")]
    gui_apikey: Option<String>,
    /// Device name for the new config.toml (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    name: Option<String>,
}

pub fn device_id(args: DeviceIdArgs) -> Result<()> {
    let cert = match (args.cert, args.home) {
        (Some(cert), _) => cert,
        (None, Some(home)) => home.join("cert.pem"),
        (None, None) => bail!("say which certificate: --cert FILE or --home DIR"),
    };
    let der = Identity::load_certificate(&cert).context("cannot read the device certificate")?;
    println!("{}", DeviceId::from_der_cert(&der));
    Ok(())
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let (cert, key) = (args.home.join("cert.pem"), args.home.join("key.pem"));
    let outcome = Identity::load_or_generate(
        &cert,
        &key,
        proto::identity::COMMON_NAME_SYNCTHING,
        args.key_type,
    )
    .context("cannot create or load the device identity")?;
    match &outcome {
        LoadedOrGenerated::Generated(_) => {
            eprintln!(
                "Generated {} key and certificate in {}",
                args.key_type,
                args.home.display()
            )
        }
        LoadedOrGenerated::Loaded(_) => {
            eprintln!(
                "Key exists in {}; not generating a new one",
                args.home.display()
            )
        }
    }
    write_config(&args)?;
    println!("{}", outcome.identity().device_id());
    Ok(())
}

/// Writes a starting, commented config.toml unless a configuration exists
/// (an existing one is never replaced; a config.json of an earlier version
/// is migrated by `node serve`).
fn write_config(args: &GenerateArgs) -> Result<()> {
    let path = crate::config::Config::path(&args.home);
    if path.exists() || args.home.join("config.json").exists() {
        return Ok(());
    }
    let name = args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "node".into())
    });
    let api_key = args.gui_apikey.clone().unwrap_or_else(|| {
        (0..32)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)]))
            .collect()
    });
    let config = crate::config::Config {
        name,
        options: crate::config::Options {
            listen_addresses: args.listen.clone(),
            reconnection_interval_s: 60,
            ..Default::default()
        },
        gui: crate::config::Gui {
            address: args.gui_address.clone().unwrap_or_default(),
            api_key,
            ..Default::default()
        },
        ..Default::default()
    };
    config.validate()?;
    config.save(&args.home)?;
    eprintln!("Wrote {}", path.display());
    Ok(())
}

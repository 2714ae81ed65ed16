//! What a relay is started with: [`ServerConfig`] and the types that
//! carry its rules. The command line (`cli.rs`) builds one; tests and
//! other programs may build one directly.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use proto::Identity;

use crate::access::{TokenSet, WatchedList, WatchedTokens};

/// Everything a relay needs to start. Fields mirror the command-line flags
/// of the same names (see `relaysrv --help`), already parsed and checked.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The relay's certificate; its device ID is the `id=` of the URI.
    pub identity: Identity,
    /// Protocol and data port; port 0 takes a free one (see
    /// [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// `/status` and `/metrics`; `None` = off.
    pub status_listen: Option<SocketAddr>,
    /// `--ext-address`: advertised instead of the bound address.
    pub external: Option<ExternalAddress>,
    pub ping_interval: Duration,
    pub network_timeout: Duration,
    pub message_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Bytes/s of each pairing; 0 = no limit.
    pub per_session_rate: u64,
    /// Bytes/s of all pairings together; 0 = no limit.
    pub global_rate: u64,
    /// Joining needs one of these tokens; `None` = anyone may join.
    pub token: Option<JoinTokens>,
    /// Device allow-lists for joining and dialing; empty = open.
    pub access: DeviceAccess,
    pub invitation_rate: u32,
    pub invitation_burst: u32,
    pub network_buffer: usize,
    pub forwarder: ForwarderKind,
    /// Pool URLs to register with (never while a token is set).
    pub pools: Vec<String>,
    pub provided_by: ProvidedBy,
    pub capacity: CapacityConfig,
    pub per_ip_conn_rate: u32,
    pub per_ip_conn_burst: u32,
}

impl ServerConfig {
    /// The command line's defaults, listening on `listen` with the status
    /// listener off.
    pub fn new(identity: Identity, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            identity,
            listen,
            status_listen: None,
            external: None,
            ping_interval: Duration::from_secs(60),
            network_timeout: Duration::from_secs(120),
            message_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            per_session_rate: 0,
            global_rate: 0,
            token: None,
            access: DeviceAccess::default(),
            invitation_rate: 10,
            invitation_burst: 50,
            network_buffer: 1_048_576,
            forwarder: ForwarderKind::default_for_platform(),
            pools: Vec::new(),
            provided_by: ProvidedBy::default(),
            capacity: CapacityConfig {
                max_clients: 0,
                max_pending: 10_000,
                max_pairings: 0,
                max_sockets: 0,
                per_source_sockets: 2000,
                per_source_pending: 100,
            },
            per_ip_conn_rate: 100,
            per_ip_conn_burst: 1000,
        }
    }
}

/// An advertised address: the host as given (a name stays a name in the
/// URI) and what it resolved to (invitations carry its IP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAddress {
    pub host: String,
    pub addr: SocketAddr,
}

/// The join tokens (any one of them is accepted) and whether dialing
/// needs one too. At least one of `fixed` and `file` is given.
#[derive(Clone)]
pub struct JoinTokens {
    /// `--token`, repeatable: fixed for the relay's life.
    pub fixed: TokenSet,
    /// `--token-file`: one token per line, reloaded when it changes, so a
    /// token is rotated by adding the new one, moving devices over, then
    /// removing the old one (joined devices stay joined).
    pub file: Option<WatchedTokens>,
    /// ConnectRequests only from devices joined (with a token) on
    /// another connection (`--connect-requires-token`).
    pub connect_requires_token: bool,
}

/// Never the tokens: configurations get debug-printed.
impl fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokens")
            .field("fixed", &self.fixed)
            .field("file", &self.file.as_ref().map(|w| w.path().to_owned()))
            .field("connect_requires_token", &self.connect_requires_token)
            .finish()
    }
}

/// Device allow-lists (`--allow-devices`, `--allow-join`,
/// `--allow-connect`), already resolved: `join` is --allow-join if given,
/// else --allow-devices; `connect` likewise. `None` = any device.
#[derive(Clone)]
pub struct DeviceAccess {
    pub join: Option<WatchedList>,
    pub connect: Option<WatchedList>,
    /// How often the files (and the token file) are checked for changes.
    pub reload_interval: Duration,
}

impl Default for DeviceAccess {
    fn default() -> Self {
        DeviceAccess {
            join: None,
            connect: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for DeviceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = |l: &Option<WatchedList>| l.as_ref().map(|w| w.path().to_owned());
        f.debug_struct("DeviceAccess")
            .field("join", &path(&self.join))
            .field("connect", &path(&self.connect))
            .field("reload_interval", &self.reload_interval)
            .finish()
    }
}

/// `--provided-by`: free text for pools and `/status`, at most 30
/// characters (strelaysrv's limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvidedBy(String);

impl ProvidedBy {
    pub const MAX_CHARS: usize = 30;

    pub fn new(text: impl Into<String>) -> Result<ProvidedBy, ConfigError> {
        let text = text.into();
        if text.chars().count() > Self::MAX_CHARS {
            return Err(ConfigError::ProvidedByTooLong);
        }
        Ok(ProvidedBy(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A configuration value out of its range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--provided-by is limited to 30 characters")]
    ProvidedByTooLong,
}

/// Capacity limits given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityConfig {
    pub max_clients: usize,
    pub max_pending: usize,
    pub max_pairings: usize,
    /// 0 = derived from the open-file limit only.
    pub max_sockets: usize,
    /// Sockets one source may hold at once; 0 = no limit.
    pub per_source_sockets: usize,
    /// Unanswered pairings one source may have; 0 = no limit.
    pub per_source_pending: usize,
}

/// How pairings move bytes (`--forwarder`, resolved for this platform).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwarderKind {
    /// Zero-copy through a kernel pipe (Linux).
    Splice,
    /// Portable user-space copy.
    Copy,
}

impl ForwarderKind {
    /// What `--forwarder auto` picks: splice where the kernel has it.
    pub fn default_for_platform() -> ForwarderKind {
        if cfg!(target_os = "linux") {
            ForwarderKind::Splice
        } else {
            ForwarderKind::Copy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provided_by_is_at_most_30_characters() {
        assert!(ProvidedBy::new("é".repeat(30)).is_ok());
        assert!(matches!(
            ProvidedBy::new("x".repeat(31)),
            Err(ConfigError::ProvidedByTooLong)
        ));
    }
}

//! What the relay's tasks read of its configuration, fixed at start.

use std::time::Duration;

use crate::config::ForwarderKind;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ping_interval: Duration,
    pub network_timeout: Duration,
    pub message_timeout: Duration,
    /// Accept to TLS done and first request read (see --handshake-timeout).
    pub handshake_timeout: Duration,
    pub per_session_rate: u64,
    pub global_rate: u64,
    /// ConnectRequests only from devices joined (with a token); only set
    /// when tokens are.
    pub connect_requires_token: bool,
    /// Invitations per second and burst per (target, source); 0 = none.
    pub invitation_rate: u32,
    pub invitation_burst: u32,
    pub network_buffer: usize,
    pub forwarder: ForwarderKind,
    /// IP bytes put in invitations: empty, 4 or 16 (see the spec's note on
    /// IPv4-mapped addresses), and the data port.
    pub invitation_address: Vec<u8>,
    pub invitation_port: u16,
    pub pools: Vec<String>,
    pub provided_by: String,
}

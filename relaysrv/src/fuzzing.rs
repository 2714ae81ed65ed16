//! What the fuzz targets in `fuzz/` drive: the relay's protocol sessions
//! (join, connect, ping, invitations between joined devices) over
//! in-memory streams, with every TLS handshake taken as done. Not an API:
//! hidden from the docs, and nothing else should call it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use daemon::Shutdown;
use proto::DeviceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::access::{self, Access, TokenSet};
use crate::config::{CapacityConfig, ForwarderKind};
use crate::limits::Capacity;
use crate::state::{Relay, Settings};

/// One device's protocol connection: what it sends, in order.
pub struct Device {
    pub id: DeviceId,
    /// The last octet of its 127.0.0.x source address: devices may share
    /// a source, as the per-source limits count by it.
    pub source: u8,
    pub steps: Vec<Step>,
}

pub enum Step {
    /// Bytes written to the relay (any framing, any content).
    Send(Vec<u8>),
    /// Virtual time passing (the runtime's clock is paused).
    Wait(Duration),
}

/// The relay's settings a fuzz input chooses.
#[derive(Default)]
pub struct Knobs {
    pub tokens: Vec<String>,
    /// Devices on the join and connect lists; `None`: no list.
    pub join: Option<Vec<DeviceId>>,
    pub connect: Option<Vec<DeviceId>>,
    pub max_clients: usize,
    pub max_pending: usize,
    pub per_source_pending: usize,
    pub invitation_rate: u32,
}

/// What each device received, and what the relay held after every
/// connection ended.
pub struct Outcome {
    pub received: Vec<Vec<u8>>,
    pub joined_after: usize,
}

/// Runs every device's connection at once against one relay, until each
/// has sent its steps and closed, and the relay has ended each session.
/// Call it inside a current-thread tokio runtime with paused time, so the
/// relay's timeouts pass in no real time.
pub async fn protocol_sessions(devices: Vec<Device>, knobs: Knobs) -> Outcome {
    let settings = Settings {
        ping_interval: Duration::from_secs(60),
        network_timeout: Duration::from_secs(120),
        message_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(30),
        per_session_rate: 0,
        global_rate: 0,
        connect_requires_token: !knobs.tokens.is_empty(),
        invitation_rate: knobs.invitation_rate,
        invitation_burst: knobs.invitation_rate,
        network_buffer: 65536,
        forwarder: ForwarderKind::Copy,
        invitation_address: vec![127, 0, 0, 1],
        invitation_port: 22067,
        pools: Vec::new(),
        provided_by: String::new(),
    };
    let tokens = TokenSet::from_tokens(knobs.tokens).unwrap_or_else(|_| empty_tokens());
    let join = knobs.join.map(|ids| list_file("join", &ids));
    let connect = knobs.connect.map(|ids| list_file("connect", &ids));
    let access = Access::new(join, connect, tokens, None, Duration::from_secs(5));
    let capacity = Capacity::new(CapacityConfig {
        max_clients: knobs.max_clients,
        max_pending: knobs.max_pending.max(1),
        max_pairings: 0,
        max_sockets: 0,
        per_source_sockets: 0,
        per_source_pending: knobs.per_source_pending,
    });
    let relay = Relay::new(settings, access, capacity, Shutdown::new());

    let mut sessions = JoinSet::new();
    let mut clients = JoinSet::new();
    for (index, device) in devices.into_iter().enumerate() {
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, device.source));
        let unproven = relay.unproven.register(relay.next_id());
        let deadline = tokio::time::Instant::now() + relay.settings.handshake_timeout;
        sessions.spawn(crate::protocol::serve_authenticated(
            relay.clone(),
            theirs,
            device.id,
            None,
            source,
            unproven,
            deadline,
        ));
        clients.spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(ours);
            let reading = async {
                let mut got = Vec::new();
                // Ends when the relay closes its side.
                let _ = rd.read_to_end(&mut got).await;
                got
            };
            let writing = async {
                for step in device.steps {
                    match step {
                        Step::Send(bytes) => {
                            if wr.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                        Step::Wait(d) => tokio::time::sleep(d).await,
                    }
                }
                let _ = wr.shutdown().await;
                // Keep the write half (and so the stream) open until the
                // relay has answered everything.
                wr
            };
            let (got, _wr) = tokio::join!(reading, writing);
            (index, got)
        });
    }
    while let Some(done) = sessions.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let mut received = vec![Vec::new(); clients.len()];
    while let Some(done) = clients.join_next().await {
        match done {
            Ok((index, got)) => received[index] = got,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    Outcome {
        received,
        joined_after: relay.joined_count(),
    }
}

fn empty_tokens() -> TokenSet {
    TokenSet::from_tokens(Vec::new()).unwrap_or_else(|_| unreachable!("no tokens is valid"))
}

/// An allow-list file in this process's own temporary directory, loaded as
/// the relay loads `--allow-join`/`--allow-connect`.
fn list_file(name: &str, ids: &[DeviceId]) -> access::WatchedList {
    let dir: PathBuf = std::env::temp_dir().join(format!("relaysrv-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory for allow-lists");
    let path = dir.join(name);
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    std::fs::write(&path, text).expect("allow-list file written");
    access::load_list(&path).expect("a list of valid IDs loads")
}

#[cfg(test)]
mod tests {
    use proto::relay::{ConnectRequest, JoinRelayRequest, Message, Response, ShortBytes};

    use super::*;

    fn frames(messages: &[Message]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|m| m.encode().expect("encodes"))
            .collect()
    }

    fn decoded(mut bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some((m, used)) =
            Message::decode_frame(bytes).expect("the relay sends valid frames")
        {
            out.push(m);
            bytes = &bytes[used..];
        }
        assert!(bytes.is_empty(), "a partial frame at the end");
        out
    }

    const A: DeviceId = DeviceId::from_bytes([1; 32]);
    const B: DeviceId = DeviceId::from_bytes([2; 32]);

    /// A joins and stays 5 s; a second later B asks for A.
    async fn a_joins_and_b_dials_a(join_list: Option<Vec<DeviceId>>) -> Outcome {
        let join = Message::JoinRelayRequest(JoinRelayRequest { token: None });
        let connect = Message::ConnectRequest(ConnectRequest {
            id: ShortBytes::from_array(*A.as_bytes()),
        });
        let devices = vec![
            Device {
                id: A,
                source: 1,
                steps: vec![
                    Step::Send(frames(&[join])),
                    Step::Wait(Duration::from_secs(5)),
                ],
            },
            Device {
                id: B,
                source: 2,
                steps: vec![
                    Step::Wait(Duration::from_secs(1)),
                    Step::Send(frames(&[connect])),
                ],
            },
        ];
        let knobs = Knobs {
            join: join_list,
            max_pending: 10,
            ..Knobs::default()
        };
        protocol_sessions(devices, knobs).await
    }

    /// The harness itself: both get their invitations, as over TLS.
    #[tokio::test(start_paused = true)]
    async fn a_joined_device_is_invited_when_another_connects() {
        let (a, b) = (A, B);
        let out = a_joins_and_b_dials_a(None).await;
        let to_a = decoded(&out.received[0]);
        let to_b = decoded(&out.received[1]);
        assert!(
            matches!(&to_a[0], Message::Response(r) if r.code == Response::SUCCESS),
            "{to_a:?}"
        );
        assert!(
            matches!(&to_a[1], Message::SessionInvitation(i) if i.from.as_slice() == b.as_bytes() && i.server_socket),
            "{to_a:?}"
        );
        assert!(
            matches!(&to_b[0], Message::SessionInvitation(i) if i.from.as_slice() == a.as_bytes() && !i.server_socket),
            "{to_b:?}"
        );
        assert_eq!(out.joined_after, 0);
    }

    /// Off the join list: A hears "wrong token" and B finds nobody.
    #[tokio::test(start_paused = true)]
    async fn a_device_off_the_join_list_is_refused_in_memory_too() {
        let out = a_joins_and_b_dials_a(Some(vec![B])).await;
        let code = |m: &Message| match m {
            Message::Response(r) => r.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(&decoded(&out.received[0])[0]), Response::WRONG_TOKEN);
        assert_eq!(code(&decoded(&out.received[1])[0]), Response::NOT_FOUND);
    }
}

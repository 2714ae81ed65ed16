//! The relay server's protocol sessions: up to four devices (some sharing
//! an ID or a source address) send any mix of well-formed requests and raw
//! bytes, with time passing between them, to one relay with fuzzed tokens,
//! allow-lists and limits. Laws:
//! - everything the relay sends is a sequence of whole, valid frames;
//! - once every connection has ended, no device is left joined;
//! - a device hears "joined" (code 0) only if it is on the join list;
//! - a listening invitation (`server_socket`) reaches only a device that
//!   was told it joined, and the invitation a dialling device gets only
//!   one on the connect list;
//! - the relay ends every session (a hang is a libFuzzer timeout).
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proto::relay::{ConnectRequest, JoinRelayRequest, Message, Response, ShortBytes, MAGIC};
use proto::DeviceId;
use relaysrv::fuzzing::{protocol_sessions, Device, Knobs, Step};

const IDS: u8 = 4;

thread_local! {
    /// One runtime for every input (its clock paused: the relay's timeouts
    /// pass in no time); building one per input took most of each run.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
}

fn id(i: u8) -> DeviceId {
    DeviceId::from_bytes([i % IDS + 1; 32])
}

#[derive(Arbitrary, Debug)]
enum FuzzStep {
    Join(Option<String>),
    /// ConnectRequest for device `i % IDS`.
    Connect(u8),
    /// ConnectRequest with any bytes as the target.
    ConnectRaw(Vec<u8>),
    Ping,
    Pong,
    /// Any message a device should not send (responses, invitations…).
    Frame(u8, Vec<u8>),
    Raw(Vec<u8>),
    /// Seconds of (virtual) time.
    Wait(u8),
}

#[derive(Arbitrary, Debug)]
struct FuzzDevice {
    id: u8,
    source: u8,
    steps: Vec<FuzzStep>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    devices: Vec<FuzzDevice>,
    tokens: Vec<String>,
    /// Bit i: device `i` is on the list; `None`: no list.
    join: Option<u8>,
    connect: Option<u8>,
    max_clients: u8,
    max_pending: u8,
    per_source_pending: u8,
    invitation_rate: u8,
}

fn encode(m: Message) -> Vec<u8> {
    m.encode().unwrap_or_default()
}

fn step(s: FuzzStep) -> Step {
    Step::Send(match s {
        FuzzStep::Join(token) => encode(Message::JoinRelayRequest(JoinRelayRequest { token })),
        FuzzStep::Connect(i) => encode(Message::ConnectRequest(ConnectRequest {
            id: ShortBytes::from_array(*id(i).as_bytes()),
        })),
        FuzzStep::ConnectRaw(bytes) => match ShortBytes::new(&bytes) {
            Ok(id) => encode(Message::ConnectRequest(ConnectRequest { id })),
            Err(_) => bytes,
        },
        FuzzStep::Ping => encode(Message::Ping),
        FuzzStep::Pong => encode(Message::Pong),
        FuzzStep::Frame(kind, payload) => {
            // Magic, type, length: the relay's header, then the payload.
            let mut b = MAGIC.to_be_bytes().to_vec();
            b.extend_from_slice(&i32::from(kind % 10).to_be_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            b.extend_from_slice(&payload);
            b
        }
        FuzzStep::Raw(bytes) => bytes,
        FuzzStep::Wait(s) => return Step::Wait(Duration::from_secs(u64::from(s))),
    })
}

fn listed(mask: Option<u8>) -> Option<Vec<DeviceId>> {
    mask.map(|m| (0..IDS).filter(|i| m & (1 << i) != 0).map(id).collect())
}

fn frames(mut bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        match Message::decode_frame(bytes) {
            Ok(Some((m, used))) => {
                out.push(m);
                bytes = &bytes[used..];
            }
            Ok(None) => {
                assert!(
                    bytes.is_empty(),
                    "the relay sent a partial frame: {bytes:?}"
                );
                return out;
            }
            Err(e) => panic!("the relay sent a malformed frame: {e}"),
        }
    }
}

fuzz_target!(|input: Input| {
    let on = |mask: Option<u8>, d: u8| mask.is_none_or(|m| m & (1 << (d % IDS)) != 0);
    let owners: Vec<u8> = input.devices.iter().take(4).map(|d| d.id).collect();
    let devices: Vec<Device> = input
        .devices
        .into_iter()
        .take(4)
        .map(|d| Device {
            id: id(d.id),
            source: d.source % 3 + 1,
            steps: d.steps.into_iter().take(12).map(step).collect(),
        })
        .collect();
    let knobs = Knobs {
        tokens: input.tokens.into_iter().take(2).collect(),
        join: listed(input.join),
        connect: listed(input.connect),
        max_clients: usize::from(input.max_clients % 5),
        max_pending: usize::from(input.max_pending % 5),
        per_source_pending: usize::from(input.per_source_pending % 3),
        invitation_rate: u32::from(input.invitation_rate % 3),
    };
    let (join_mask, connect_mask) = (input.join, input.connect);
    let out = RUNTIME.with(|rt| rt.block_on(protocol_sessions(devices, knobs)));
    assert_eq!(
        out.joined_after, 0,
        "a device stayed joined after its connection ended"
    );
    for (received, &who) in out.received.iter().zip(&owners) {
        let mut joined = false;
        for m in frames(received) {
            match m {
                Message::Response(r) if r.code == Response::SUCCESS => {
                    assert!(
                        on(join_mask, who),
                        "device {who} joined though not on the join list"
                    );
                    joined = true;
                }
                Message::SessionInvitation(inv) if inv.server_socket => {
                    assert!(
                        joined,
                        "device {who} invited to listen without having joined"
                    );
                }
                Message::SessionInvitation(_) => {
                    assert!(
                        on(connect_mask, who),
                        "device {who} dialled though not on the connect list"
                    );
                }
                _ => {}
            }
        }
    }
});

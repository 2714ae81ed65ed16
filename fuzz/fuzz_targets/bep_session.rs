//! The BEP session state machine driven by a peer that sends any frames in
//! any order (well-formed messages, split anywhere, or raw bytes), while
//! our side sends, closes and lets time pass. Laws:
//! - states only move forward (Hello → ClusterConfig → ready → closed);
//! - the first event is the Hello, the first message a ClusterConfig;
//! - an error or a Close leaves the session closed, and closed stays quiet;
//! - everything we queue is a stream a second session accepts without error,
//!   with our ClusterConfig (or Close) first.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fuzz::Msg;
use libfuzzer_sys::fuzz_target;
use proto::bep::session::{Event, Session, SessionError, State};
use proto::bep::wire::Hello;
use proto::bep::{encode_frame, encode_hello, Compress, Message};

#[derive(Arbitrary, Debug)]
enum Op {
    PeerHello {
        name: String,
        version: String,
        connections: i32,
    },
    /// A frame from the peer, cut after `split` bytes (the rest follows).
    PeerMessage {
        msg: Msg,
        compress: u8,
        split: u16,
    },
    PeerRaw(Vec<u8>),
    Send(Msg),
    Close(String),
    Advance(u16),
    Drain,
}

#[derive(Arbitrary, Debug)]
struct Input {
    compress: u8,
    ops: Vec<Op>,
}

fn compress(c: u8) -> Compress {
    [Compress::Metadata, Compress::Never, Compress::Always][usize::from(c % 3)]
}

fn rank(s: State) -> u8 {
    match s {
        State::AwaitingHello => 0,
        State::AwaitingClusterConfig => 1,
        State::Ready => 2,
        State::Closed => 3,
    }
}

struct Checked {
    session: Session,
    seen_hello: bool,
    seen_message: bool,
}

impl Checked {
    fn drain(&mut self) {
        loop {
            let before = self.session.state();
            let result = self.session.next_event();
            let after = self.session.state();
            assert!(rank(after) >= rank(before), "{before:?} -> {after:?}");
            match result {
                Ok(None) => return,
                Err(_) => {
                    assert_eq!(after, State::Closed);
                    assert!(matches!(self.session.next_event(), Ok(None)));
                    return;
                }
                Ok(Some(Event::Hello(_))) => {
                    assert!(!self.seen_hello);
                    assert_eq!(before, State::AwaitingHello);
                    self.seen_hello = true;
                }
                Ok(Some(Event::Message(m))) => {
                    assert!(self.seen_hello);
                    if !self.seen_message {
                        assert!(
                            matches!(m, Message::ClusterConfig(_)),
                            "first was {}",
                            m.kind()
                        );
                        self.seen_message = true;
                    }
                    assert_eq!(after, State::Ready);
                }
                Ok(Some(Event::Closed(_))) => {
                    assert_eq!(after, State::Closed);
                }
            }
        }
    }
}

fn hello(name: &str) -> Hello {
    Hello {
        device_name: name.into(),
        client_name: "fuzz".into(),
        client_version: "v0".into(),
        num_connections: 1,
        timestamp: 0,
    }
}

fuzz_target!(|input: Input| {
    let start = Instant::now();
    let mut now = start;
    let Ok(session) = Session::new(&hello("us"), compress(input.compress), now) else {
        return;
    };
    let mut us = Checked {
        session,
        seen_hello: false,
        seen_message: false,
    };
    // The peer's view of what we send: a second session must accept it.
    let mut mirror = Checked {
        session: Session::new(&hello("peer"), Compress::Never, now).unwrap(),
        seen_hello: false,
        seen_message: false,
    };
    let mut pending: Vec<u8> = Vec::new();
    for op in input.ops {
        match op {
            Op::PeerHello {
                name,
                version,
                connections,
            } => {
                let h = Hello {
                    device_name: name,
                    client_version: version,
                    num_connections: connections,
                    ..hello("")
                };
                if let Ok(bytes) = encode_hello(&h) {
                    us.session.receive(&bytes, now);
                }
            }
            Op::PeerMessage {
                msg,
                compress: c,
                split,
            } => {
                if let Ok(bytes) = encode_frame(&msg.to_message(), compress(c)) {
                    pending.extend_from_slice(&bytes);
                    let cut = usize::from(split).min(pending.len());
                    us.session.receive(&pending[..cut], now);
                    pending.drain(..cut);
                }
            }
            Op::PeerRaw(bytes) => us.session.receive(&bytes, now),
            Op::Send(msg) => {
                let m = msg.to_message();
                // An unknown type with a known number would be read as that
                // message (an empty Close, say): not what we would send.
                if matches!(m, Message::Unknown(0..=7)) {
                    continue;
                }
                let was = us.session.state();
                match us.session.send(&m, now) {
                    Err(SessionError::Closed) => assert_eq!(was, State::Closed),
                    Err(SessionError::OwnOrder(_)) => {
                        assert!(!matches!(m, Message::ClusterConfig(_) | Message::Close(_)))
                    }
                    _ => {}
                }
            }
            Op::Close(reason) => {
                us.session.close(&reason, now);
                assert_eq!(us.session.state(), State::Closed);
            }
            Op::Advance(secs) => {
                now += Duration::from_secs(u64::from(secs));
                let was = us.session.state();
                if us.session.poll_timers(now).is_err() {
                    assert_eq!(us.session.state(), State::Closed);
                }
                if was == State::Closed {
                    assert_eq!(us.session.poll_timeout(), None);
                }
            }
            Op::Drain => us.drain(),
        }
        let out = us.session.take_outgoing();
        mirror.session.receive(&out, now);
        mirror.drain();
        assert_ne!(
            (mirror.session.state(), us.session.state() == State::Closed),
            (State::Closed, false),
            "the peer's view closed while we are open"
        );
    }
    us.drain();
});

use super::*;
use crate::bep::wire::{Device, Folder};

fn hello(name: &str) -> Hello {
    Hello {
        device_name: name.into(),
        client_name: "syncthing".into(),
        client_version: "v1.19.2".into(),
        ..Default::default()
    }
}

/// Two sessions wired back to back.
fn pair(now: Instant) -> (Session, Session) {
    let a = Session::new(&hello("a"), Compress::Metadata, now).unwrap();
    let b = Session::new(&hello("b"), Compress::Metadata, now).unwrap();
    (a, b)
}

fn pump(from: &mut Session, to: &mut Session, now: Instant) -> Vec<Event> {
    let bytes = from.take_outgoing();
    // Deliver byte by byte: framing must cope with any split.
    let mut events = Vec::new();
    for b in bytes {
        to.receive(&[b], now);
        while let Some(e) = to.next_event().unwrap() {
            events.push(e);
        }
    }
    events
}

#[test]
fn hello_then_cluster_config_then_messages() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    assert_eq!(pump(&mut a, &mut b, now), vec![Event::Hello(hello("a"))]);
    assert_eq!(b.state(), State::AwaitingClusterConfig);
    // Our own order is enforced too.
    assert_eq!(
        a.send(&Message::Ping, now),
        Err(SessionError::OwnOrder("Ping"))
    );
    let cc = Message::ClusterConfig(ClusterConfig::default());
    a.send(&cc, now).unwrap();
    a.send(&Message::Ping, now).unwrap();
    assert_eq!(
        pump(&mut a, &mut b, now),
        vec![Event::Message(cc), Event::Message(Message::Ping)]
    );
    assert_eq!(b.state(), State::Ready);
    pump(&mut b, &mut a, now);
    a.close("bye", now);
    assert_eq!(pump(&mut a, &mut b, now), vec![Event::Closed("bye".into())]);
    assert_eq!(b.state(), State::Closed);
}

/// Found by fuzz/bep_session: a Close queued with `send` left the session
/// open, still taking messages for a peer that reads nothing after it.
#[test]
fn sending_close_closes_the_session() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    let close = Message::Close(wire::Close {
        reason: "bye".into(),
    });
    a.send(&close, now).unwrap();
    assert_eq!(a.state(), State::Closed);
    assert_eq!(a.send(&Message::Ping, now), Err(SessionError::Closed));
    assert_eq!(a.poll_timeout(), None);
    // What was queued still reaches the peer: our Hello, then the Close.
    let events = pump(&mut a, &mut b, now);
    assert_eq!(
        events,
        vec![Event::Hello(hello("a")), Event::Closed("bye".into())]
    );
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn a_message_before_cluster_config_is_a_protocol_error() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    pump(&mut a, &mut b, now);
    let ping = encode_frame(&Message::Ping, Compress::Never).unwrap();
    b.receive(&ping, now);
    assert_eq!(
        b.next_event(),
        Err(SessionError::FirstNotClusterConfig("Ping"))
    );
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn garbage_instead_of_hello_is_refused() {
    let now = Instant::now();
    let (_, mut b) = pair(now);
    b.receive(b"\x16\x03\x01\x02\x00", now);
    assert!(matches!(b.next_event(), Err(SessionError::Hello(_))));
}

#[test]
fn pings_when_quiet_and_times_out_when_the_peer_is_silent() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    pump(&mut a, &mut b, t0);
    pump(&mut b, &mut a, t0);
    a.send(&Message::ClusterConfig(ClusterConfig::default()), t0)
        .unwrap();
    a.take_outgoing();
    a.poll_timers(t0 + Duration::from_secs(10)).unwrap();
    assert!(!a.has_outgoing());
    a.poll_timers(t0 + Duration::from_secs(46)).unwrap();
    assert_eq!(
        a.take_outgoing(),
        encode_frame(&Message::Ping, Compress::Never).unwrap()
    );
    assert_eq!(
        a.poll_timers(t0 + Duration::from_secs(301)),
        Err(SessionError::ReceiveTimeout(RECEIVE_TIMEOUT))
    );
    assert_eq!(a.state(), State::Closed);
    // The Close went out with its reason.
    let out = a.take_outgoing();
    assert!(out.ends_with(b"read timeout"));
}

#[test]
fn hello_must_arrive_in_time() {
    let t0 = Instant::now();
    let (_, mut b) = pair(t0);
    b.poll_timers(t0 + Duration::from_secs(5)).unwrap();
    assert_eq!(
        b.poll_timers(t0 + Duration::from_secs(21)),
        Err(SessionError::HelloTimeout(HELLO_TIMEOUT))
    );
}

/// Two sessions past the Hello, `a` having sent its ClusterConfig at `t0`.
fn connected(t0: Instant) -> (Session, Session) {
    let (mut a, mut b) = pair(t0);
    pump(&mut a, &mut b, t0);
    pump(&mut b, &mut a, t0);
    a.send(&Message::ClusterConfig(ClusterConfig::default()), t0)
        .unwrap();
    a.take_outgoing();
    (a, b)
}

#[test]
fn the_timeout_is_the_hello_deadline_until_the_hello() {
    let t0 = Instant::now();
    let (_, mut b) = pair(t0);
    assert_eq!(b.poll_timeout(), Some(t0 + HELLO_TIMEOUT));
    // Just before, nothing happens and the deadline stays.
    let before = t0 + HELLO_TIMEOUT - Duration::from_millis(1);
    b.poll_timers(before).unwrap();
    assert_eq!(b.poll_timeout(), Some(t0 + HELLO_TIMEOUT));
    // At the deadline, the timer fires; a closed session has none.
    assert_eq!(
        b.poll_timers(b.poll_timeout().unwrap()),
        Err(SessionError::HelloTimeout(HELLO_TIMEOUT))
    );
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn no_ping_deadline_before_our_cluster_config() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(t0);
    pump(&mut a, &mut b, t0);
    pump(&mut b, &mut a, t0);
    // Only the receive timeout runs: a Ping may not be our first message.
    assert_eq!(a.poll_timeout(), Some(t0 + RECEIVE_TIMEOUT));
}

#[test]
fn the_timeout_moves_with_sends_and_receives() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected(t0);
    assert_eq!(a.poll_timeout(), Some(t0 + PING_INTERVAL));

    // Sending pushes the Ping back; never earlier than the last event.
    let t1 = t0 + Duration::from_secs(30);
    a.send(&Message::Ping, t1).unwrap();
    assert_eq!(a.poll_timeout(), Some(t1 + PING_INTERVAL));
    assert!(a.poll_timeout().unwrap() > t1);

    // Once the Pings are what is due, the receive timeout comes first
    // only when the peer has been silent long: receiving pushes it back.
    let t2 = t0 + RECEIVE_TIMEOUT - Duration::from_secs(10);
    a.send(&Message::Ping, t2).unwrap();
    assert_eq!(a.poll_timeout(), Some(t0 + RECEIVE_TIMEOUT));
    b.send(&Message::ClusterConfig(ClusterConfig::default()), t2)
        .unwrap();
    pump(&mut b, &mut a, t2);
    assert_eq!(a.poll_timeout(), Some(t2 + PING_INTERVAL));
    assert!(a.poll_timeout().unwrap() > t2);
}

#[test]
fn polling_at_the_timeout_pings_then_gives_up() {
    let t0 = Instant::now();
    let (mut a, _b) = connected(t0);
    let ping = encode_frame(&Message::Ping, Compress::Never).unwrap();
    let mut pings = 0;
    // Sleeping from deadline to deadline: every wake-up does something,
    // a Ping each interval until the peer's silence runs out.
    loop {
        let at = a.poll_timeout().expect("a timer runs while connected");
        match a.poll_timers(at) {
            Ok(()) => {
                assert_eq!(a.take_outgoing(), ping, "woken at {at:?} for nothing");
                pings += 1;
            }
            Err(e) => {
                assert_eq!(e, SessionError::ReceiveTimeout(RECEIVE_TIMEOUT));
                assert_eq!(at, t0 + RECEIVE_TIMEOUT);
                break;
            }
        }
    }
    assert_eq!(
        pings,
        (RECEIVE_TIMEOUT.as_secs() / PING_INTERVAL.as_secs()) as usize
    );
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn a_deadline_already_passed_is_due_at_once() {
    let t0 = Instant::now();
    let (mut a, _b) = connected(t0);
    // A caller that slept late finds the deadline in its past, and
    // polling then does the work.
    let late = t0 + PING_INTERVAL + Duration::from_secs(3);
    assert!(a.poll_timeout().unwrap() < late);
    a.poll_timers(late).unwrap();
    assert!(a.has_outgoing());
    assert_eq!(a.poll_timeout(), Some(late + PING_INTERVAL));
}

#[test]
fn cluster_config_must_name_both_devices() {
    let (local, remote) = (DeviceId::from_der_cert(b"l"), DeviceId::from_der_cert(b"r"));
    let dev = |id: DeviceId| Device {
        id: id.as_bytes().to_vec(),
        ..Default::default()
    };
    let folder = |devices| ClusterConfig {
        folders: vec![Folder {
            id: "f".into(),
            devices,
            ..Default::default()
        }],
        secondary: false,
    };
    assert_eq!(
        check_cluster_config(&folder(vec![dev(local), dev(remote)]), local, remote),
        Ok(())
    );
    assert_eq!(
        check_cluster_config(&folder(vec![dev(local)]), local, remote),
        Err(ContentError::RemoteMissing("f".into()))
    );
    assert_eq!(
        check_cluster_config(&folder(vec![dev(remote)]), local, remote),
        Err(ContentError::LocalMissing("f".into()))
    );
    let mut bad = folder(vec![dev(local), dev(remote)]);
    bad.folders[0].devices[0].id = vec![1, 2, 3];
    assert!(check_cluster_config(&bad, local, remote).is_err());
}

#[test]
fn a_cluster_config_sent_again_is_delivered() {
    // 2.x sends a new ClusterConfig whenever its configuration changes.
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    pump(&mut a, &mut b, now);
    a.send(&Message::ClusterConfig(ClusterConfig::default()), now)
        .unwrap();
    pump(&mut a, &mut b, now);
    assert_eq!(b.state(), State::Ready);
    let mut changed = ClusterConfig::default();
    changed.folders.push(Folder {
        id: "f".into(),
        stop_reason: crate::bep::wire::FolderStopReason::Paused as i32,
        ..Default::default()
    });
    a.send(&Message::ClusterConfig(changed.clone()), now)
        .unwrap();
    assert_eq!(
        pump(&mut a, &mut b, now),
        vec![Event::Message(Message::ClusterConfig(changed))]
    );
    assert_eq!(b.state(), State::Ready);
}

#[test]
fn folder_type_and_stop_reason_are_1_x_bools_on_the_wire() {
    use crate::bep::wire::{FolderStopReason, FolderType};
    use prost::Message as _;
    let folder = Folder {
        r#type: FolderType::SendOnly as i32,
        stop_reason: FolderStopReason::Paused as i32,
        ..Default::default()
    };
    // Field 3 and field 7 as varint 1: exactly 1.x's read_only = true and
    // paused = true.
    assert_eq!(folder.encode_to_vec(), vec![0x18, 0x01, 0x38, 0x01]);
    // 1.x's ignore_permissions/ignore_delete/disable_temp_indexes (4-6)
    // are read past; a peer that never sets `type` reads as SEND_RECEIVE.
    let from_1x = [0x20, 0x01, 0x28, 0x01, 0x30, 0x01];
    let f = Folder::decode(&from_1x[..]).unwrap();
    assert_eq!(f.r#type(), FolderType::SendReceive);
    assert_eq!(f.stop_reason(), FolderStopReason::Running);
}

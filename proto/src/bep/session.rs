//! The connection state machine, without sockets: bytes from the peer go in
//! with [`Session::receive`], events come out of [`Session::next_event`],
//! bytes for the peer accumulate in [`Session::take_outgoing`]. Timers are
//! driven by the caller's clock: [`Session::poll_timeout`] says when
//! [`Session::poll_timers`] next has work.
//!
//! States: awaiting the peer's Hello → awaiting its ClusterConfig → ready →
//! closed. Our own Hello is queued at creation; our first message must be a
//! ClusterConfig (or Close), as the peer insists on the same.

use std::time::{Duration, Instant};

use super::frame::{decode_frame, encode_frame, Compress, Decoded, FrameError, Message};
use super::hello::{decode_hello, encode_hello, HelloError};
use super::limits::{MAX_CLUSTER_FOLDERS, MAX_FOLDER_DEVICES, MAX_FOLDER_ID, MAX_FOLDER_LABEL};
use super::wire::{self, ClusterConfig, Hello};
use crate::device_id::DeviceId;

/// Send a Ping when nothing was written for this long.
pub const PING_INTERVAL: Duration = Duration::from_secs(45);
/// Give up on a peer that sent nothing for this long.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// The Hello exchange must finish within this time after TLS.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AwaitingHello,
    AwaitingClusterConfig,
    Ready,
    Closed,
}

/// What the peer did.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Hello(Hello),
    /// Any message after the Hello, already checked against the state (the
    /// first one is always a ClusterConfig).
    Message(Message),
    /// The peer sent Close; nothing follows.
    Closed(String),
}

/// Why the connection must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("Hello: {0}")]
    Hello(#[from] HelloError),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: first message was {0}, not ClusterConfig")]
    FirstNotClusterConfig(&'static str),
    #[error("protocol error: we must send ClusterConfig before {0}")]
    OwnOrder(&'static str),
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("nothing received for {0:?}")]
    ReceiveTimeout(Duration),
    #[error("connection is closed")]
    Closed,
}

/// One BEP connection's protocol state.
pub struct Session {
    state: State,
    we_sent_cluster_config: bool,
    compress: Compress,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    started: Instant,
    last_read: Instant,
    last_write: Instant,
}

impl Session {
    /// A new session that has queued our Hello.
    pub fn new(our_hello: &Hello, compress: Compress, now: Instant) -> Result<Self, SessionError> {
        Ok(Session {
            state: State::AwaitingHello,
            we_sent_cluster_config: false,
            compress,
            inbuf: Vec::new(),
            outbuf: encode_hello(our_hello)?,
            started: now,
            last_read: now,
            last_write: now,
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes read from the peer.
    pub fn receive(&mut self, data: &[u8], now: Instant) {
        if !data.is_empty() {
            self.last_read = now;
        }
        if self.state != State::Closed {
            self.inbuf.extend_from_slice(data);
        }
    }

    /// How many bytes the receive buffer holds (for backpressure).
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }

    /// The next event from the received bytes; `Ok(None)` until more bytes
    /// arrive. After an error or a Close the session is closed.
    pub fn next_event(&mut self) -> Result<Option<Event>, SessionError> {
        let result = self.decode_next();
        if result.is_err() {
            self.state = State::Closed;
            self.inbuf = Vec::new();
        }
        result
    }

    fn decode_next(&mut self) -> Result<Option<Event>, SessionError> {
        match self.state {
            State::Closed => Ok(None),
            State::AwaitingHello => {
                let Some((hello, used)) = decode_hello(&self.inbuf)? else {
                    return Ok(None);
                };
                self.inbuf.drain(..used);
                self.state = State::AwaitingClusterConfig;
                Ok(Some(Event::Hello(hello)))
            }
            State::AwaitingClusterConfig | State::Ready => {
                let Decoded::Frame { message, consumed } = decode_frame(&self.inbuf)? else {
                    return Ok(None);
                };
                self.inbuf.drain(..consumed);
                match (&message, self.state) {
                    (Message::Close(c), _) => {
                        self.state = State::Closed;
                        self.inbuf = Vec::new();
                        Ok(Some(Event::Closed(c.reason.clone())))
                    }
                    (Message::ClusterConfig(_), State::AwaitingClusterConfig) => {
                        self.state = State::Ready;
                        Ok(Some(Event::Message(message)))
                    }
                    (_, State::AwaitingClusterConfig) => {
                        Err(SessionError::FirstNotClusterConfig(message.kind()))
                    }
                    _ => Ok(Some(Event::Message(message))),
                }
            }
        }
    }

    /// Queues a message for the peer. Sending a Close closes the session,
    /// as [`Session::close`] does: the peer reads nothing after it.
    pub fn send(&mut self, message: &Message, now: Instant) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        match message {
            Message::ClusterConfig(_) => self.we_sent_cluster_config = true,
            Message::Close(_) => {}
            other if !self.we_sent_cluster_config => {
                return Err(SessionError::OwnOrder(other.kind()))
            }
            _ => {}
        }
        let frame = encode_frame(message, self.compress)?;
        if self.outbuf.is_empty() {
            self.outbuf = frame; // no copy for the common case
        } else {
            self.outbuf.extend_from_slice(&frame);
        }
        self.last_write = now;
        if let Message::Close(_) = message {
            // Open after a Close, the session would go on accepting
            // messages for a peer that has stopped reading (found by
            // fuzz/bep_session).
            self.state = State::Closed;
            self.inbuf = Vec::new();
        }
        Ok(())
    }

    /// Queues Close with `reason` and closes the session.
    pub fn close(&mut self, reason: &str, now: Instant) {
        if self.state != State::Closed && self.state != State::AwaitingHello {
            let close = Message::Close(wire::Close {
                reason: reason.to_string(),
            });
            if let Ok(frame) = encode_frame(&close, Compress::Never) {
                self.outbuf.extend_from_slice(&frame);
                self.last_write = now;
            }
        }
        self.state = State::Closed;
        self.inbuf = Vec::new();
    }

    /// Bytes to write to the peer, in order.
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbuf)
    }

    /// Whether bytes are waiting to be written.
    pub fn has_outgoing(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Keep-alive and timeouts: queues a Ping when we have been quiet for
    /// [`PING_INTERVAL`], fails when the peer has been silent for
    /// [`RECEIVE_TIMEOUT`] or never finished its Hello. Call it at
    /// [`Session::poll_timeout`] (calling it earlier does no harm).
    pub fn poll_timers(&mut self, now: Instant) -> Result<(), SessionError> {
        let due = |deadline: Option<Instant>| deadline.is_some_and(|d| now >= d);
        let deadlines = self.deadlines();
        if due(deadlines.hello) {
            self.state = State::Closed;
            return Err(SessionError::HelloTimeout(HELLO_TIMEOUT));
        }
        if due(deadlines.receive) {
            self.close("read timeout", now);
            return Err(SessionError::ReceiveTimeout(RECEIVE_TIMEOUT));
        }
        if due(deadlines.ping) {
            self.send(&Message::Ping, now)?;
        }
        Ok(())
    }

    /// The earliest instant at which [`Session::poll_timers`] has something
    /// to do; `None` when no timer runs (the session is closed). It moves
    /// with every `receive` and `send`, so ask again after each.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let d = self.deadlines();
        [d.hello, d.receive, d.ping].into_iter().flatten().min()
    }

    /// The deadlines of the current state: the one place both
    /// [`Session::poll_timers`] and [`Session::poll_timeout`] read, so a
    /// caller that sleeps until the timeout always finds the timer due.
    fn deadlines(&self) -> Deadlines {
        // An instant too far to represent is a deadline never reached.
        let after = |from: Instant, d: Duration| from.checked_add(d);
        match self.state {
            State::Closed => Deadlines::default(),
            State::AwaitingHello => Deadlines {
                hello: after(self.started, HELLO_TIMEOUT),
                ..Deadlines::default()
            },
            State::AwaitingClusterConfig | State::Ready => Deadlines {
                receive: after(self.last_read, RECEIVE_TIMEOUT),
                // No Ping before our ClusterConfig: it must be our first
                // message.
                ping: self
                    .we_sent_cluster_config
                    .then(|| after(self.last_write, PING_INTERVAL))
                    .flatten(),
                ..Deadlines::default()
            },
        }
    }
}

/// When each of the session's timers fires; `None` for a timer that does
/// not run in the current state.
#[derive(Debug, Default)]
struct Deadlines {
    hello: Option<Instant>,
    receive: Option<Instant>,
    ping: Option<Instant>,
}

/// Why a ClusterConfig from a peer was refused (index entries and
/// Requests: [`super::rules`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("folder {0:?}: remote device missing in cluster config")]
    RemoteMissing(String),
    #[error("folder {0:?}: local device missing in cluster config")]
    LocalMissing(String),
    #[error("invalid device ID in cluster config folder {0:?}")]
    BadDeviceId(String),
    #[error("cluster config lists {0} folders, over the limit of {MAX_CLUSTER_FOLDERS}")]
    TooManyFolders(usize),
    #[error("cluster config folder lists {0} devices, over the limit of {MAX_FOLDER_DEVICES}")]
    TooManyDevices(usize),
    #[error("cluster config folder ID or label is too long ({0} bytes)")]
    FolderNameTooLong(usize),
}

/// The spec's rule: every folder entry lists both the sender and us.
pub fn check_cluster_config(
    cc: &ClusterConfig,
    local: DeviceId,
    remote: DeviceId,
) -> Result<(), ContentError> {
    if cc.folders.len() > MAX_CLUSTER_FOLDERS {
        return Err(ContentError::TooManyFolders(cc.folders.len()));
    }
    for folder in &cc.folders {
        if folder.devices.len() > MAX_FOLDER_DEVICES {
            return Err(ContentError::TooManyDevices(folder.devices.len()));
        }
        if folder.id.len() > MAX_FOLDER_ID || folder.label.len() > MAX_FOLDER_LABEL {
            return Err(ContentError::FolderNameTooLong(
                folder.id.len().max(folder.label.len()),
            ));
        }
        let mut ids = Vec::with_capacity(folder.devices.len());
        for d in &folder.devices {
            ids.push(
                DeviceId::from_slice(&d.id)
                    .map_err(|_| ContentError::BadDeviceId(folder.id.clone()))?,
            );
        }
        if !ids.contains(&remote) {
            return Err(ContentError::RemoteMissing(folder.id.clone()));
        }
        if !ids.contains(&local) {
            return Err(ContentError::LocalMissing(folder.id.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

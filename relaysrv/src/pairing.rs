//! Pairings from invitation to both data connections joined.
//!
//! A ConnectRequest creates a pending pairing with two fresh random keys,
//! one per side. Each key works once. The first data connection to present
//! its key waits inside the pending pairing (no task, no buffer: just the
//! socket); the second one takes it and starts forwarding. A sweeper drops
//! pairings not completed within the message timeout.

use std::sync::Arc;
use std::time::Duration;

use proto::relay::{Message, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::limits::{SocketGuard, UnprovenGuard};
use crate::metrics::Reject;
use crate::state::pending::Slot;
use crate::state::Relay;
use daemon::sync::MutexExt;

/// Runs the sweeper until shutdown, then closes the data connections
/// still waiting for their other side: they have no task of their own.
pub async fn sweep(relay: Arc<Relay>) {
    let every = (relay.settings.message_timeout / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = relay.shutdown.cancelled() => {
                relay.pending.clear(&relay);
                return;
            }
        }
        let n = relay.pending.expire(&relay, relay.settings.message_timeout);
        for _ in 0..n {
            relay.metrics.reject(Reject::Timeout);
        }
        if n > 0 {
            tracing::debug!(expired = n, "pending pairings expired");
        }
    }
}

async fn reply(relay: &Relay, stream: &mut TcpStream, code: i32) -> bool {
    let Ok(bytes) = Message::Response(Response::with_code(code)).encode() else {
        return false;
    };
    let write = tokio::time::timeout(relay.settings.message_timeout, stream.write_all(&bytes));
    matches!(relay.unless_stopping(write).await, Some(Ok(Ok(()))))
}

/// A data connection presented `key`.
pub async fn join(
    relay: Arc<Relay>,
    mut stream: TcpStream,
    guard: SocketGuard,
    unproven: UnprovenGuard,
    key: &[u8],
) {
    let Some(p) = relay.pending.take_key(key) else {
        relay.metrics.reject(Reject::UnknownKey);
        reply(&relay, &mut stream, Response::NOT_FOUND).await;
        return;
    };
    // A valid key: this socket belongs to a pairing now and is no longer
    // evicted for newcomers (the pairing's own timeout bounds it).
    drop(unproven);
    if matches!(*p.slot.locked(), Slot::Closed) {
        relay.metrics.reject(Reject::AlreadyJoined);
        reply(&relay, &mut stream, Response::ALREADY_CONNECTED).await;
        return;
    }
    // Success goes out before the socket can be paired, so it can never
    // interleave with forwarded bytes.
    if !reply(&relay, &mut stream, Response::SUCCESS).await {
        return;
    }
    let other = {
        let mut slot = p.slot.locked();
        match std::mem::replace(&mut *slot, Slot::Closed) {
            Slot::Empty => {
                *slot = Slot::Waiting(stream, guard);
                return;
            }
            Slot::Waiting(s, g) => Some((s, g)),
            // Expired or its device left while we answered.
            Slot::Closed => None,
        }
    };
    let Some((first, first_guard)) = other else {
        return;
    };
    relay.pending.finish(&relay, &p);
    crate::splice::run_pairing(relay, &p, first, stream).await;
    drop((first_guard, guard));
}

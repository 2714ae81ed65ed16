//! Our Requests to one connected device and the matching of its Responses:
//! every request gets a fresh ID, waits for its Response (bounded in time)
//! and is forgotten when answered, timed out, cancelled or disconnected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Result};
use proto::bep::wire::{Request, Response};
use proto::bep::Message;
use tokio::sync::{mpsc, oneshot};

use daemon::sync::MutexExt;

/// A Response later than this counts as lost (the peer may be slow, but
/// another device or a later round can serve the block).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Requester {
    tx: mpsc::Sender<Message>,
    next_id: AtomicI32,
    pending: Mutex<HashMap<i32, oneshot::Sender<Response>>>,
    closed: AtomicBool,
    /// Requests sent on this connection, and data bytes received in
    /// successful Responses (`node_connection_requests`, …).
    sent: AtomicU64,
    received_bytes: AtomicU64,
}

/// Removes a request's slot however its wait ends.
struct Slot<'a> {
    owner: &'a Requester,
    id: i32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.pending().remove(&self.id);
    }
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("waiting", &self.pending().len())
            .finish()
    }
}

impl Requester {
    pub fn new(tx: mpsc::Sender<Message>) -> Requester {
        Requester {
            tx,
            next_id: AtomicI32::new(0),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<Response>>> {
        self.pending.locked()
    }

    /// Sends `req` (its ID is set here) and returns the data of a
    /// successful Response. The caller verifies the data.
    pub async fn request(&self, mut req: Request) -> Result<Vec<u8>> {
        // IDs stay non-negative and wrap; one in use is never reused.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        req.id = id;
        let (otx, orx) = oneshot::channel();
        {
            let mut p = self.pending();
            if self.closed.load(Ordering::Relaxed) {
                bail!("connection closed");
            }
            if p.contains_key(&id) {
                bail!("request ID {id} still in use");
            }
            p.insert(id, otx);
        }
        let _slot = Slot { owner: self, id };
        if self.tx.send(Message::Request(req)).await.is_err() {
            bail!("connection closed");
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, orx).await {
            Err(_) => bail!("no response within {} s", RESPONSE_TIMEOUT.as_secs()),
            Ok(Err(_)) => bail!("connection closed"),
            Ok(Ok(r)) => r,
        };
        match resp.code {
            0 => {
                self.received_bytes
                    .fetch_add(resp.data.len() as u64, Ordering::Relaxed);
                Ok(resp.data)
            }
            1 => bail!("peer error: generic"),
            2 => bail!("peer error: no such file"),
            3 => bail!("peer error: invalid file"),
            c => bail!("peer error code {c}"),
        }
    }

    /// Requests waiting for their Response.
    pub fn outstanding(&self) -> usize {
        self.pending().len()
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Data bytes received in successful Responses so far.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Hands a Response to its waiting request; unknown IDs are dropped.
    pub fn deliver(&self, resp: Response) {
        if let Some(tx) = self.pending().remove(&resp.id) {
            let _ = tx.send(resp);
        }
    }

    /// Fails every waiting request (the connection ended).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.pending().clear();
    }
}

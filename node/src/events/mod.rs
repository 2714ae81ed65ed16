//! The event bus: Syncthing's event types and JSON shapes (`id`,
//! `globalID`, `time`, `type`, `data`), kept in two bounded rings (the
//! on-disk change events apart, so a big scan cannot push state events
//! out) and read by `/rest/events` long polls.
//!
//! Each node owns one [`Events`] (`node.events`): its bus, its records
//! (`record.rs`) and its download progress (`progress.rs`), so two nodes
//! in one process never see each other's events. The functions of
//! `data.rs` build each event's data and feed the records with it.

mod data;
mod kind;
pub mod progress;
pub mod record;
mod ring;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

pub use kind::{Kind, Mask};
use ring::Ring;

use daemon::sync::MutexExt;

/// Events kept per ring (Syncthing keeps 1000 per subscription).
pub const RING_CAPACITY: usize = 1000;

pub struct Event {
    /// Increasing across the whole bus, so `since=` works for any mask.
    pub id: u64,
    pub time: SystemTime,
    pub kind: Kind,
    pub data: Value,
}

impl Event {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "globalID": self.id,
            "time": crate::timefmt::rfc3339(self.time),
            "type": self.kind.name(),
            "data": self.data,
        })
    }
}

struct Rings {
    last_id: u64,
    general: Ring<Arc<Event>>,
    disk: Ring<Arc<Event>>,
}

pub struct Bus {
    rings: Mutex<Rings>,
    /// The last id emitted; long polls wait on its changes.
    latest: watch::Sender<u64>,
    /// Folder labels for the change events (set with the configuration).
    labels: Mutex<HashMap<String, String>>,
}

impl Bus {
    pub fn new(capacity: usize) -> Bus {
        Bus {
            rings: Mutex::new(Rings {
                last_id: 0,
                general: Ring::new(capacity),
                disk: Ring::new(capacity),
            }),
            latest: watch::channel(0).0,
            labels: Mutex::new(HashMap::new()),
        }
    }

    pub fn emit(&self, kind: Kind, data: Value) {
        let id = {
            let mut r = self.rings.locked();
            r.last_id += 1;
            let ev = Arc::new(Event {
                id: r.last_id,
                time: SystemTime::now(),
                kind,
                data,
            });
            if kind.is_disk() {
                r.disk.push(ev);
            } else {
                r.general.push(ev);
            }
            r.last_id
        };
        self.latest.send_replace(id);
    }

    /// Buffered events after `since` that `mask` selects, oldest first.
    pub fn since(&self, since: u64, mask: &Mask) -> Vec<Arc<Event>> {
        let r = self.rings.locked();
        let pick = |ring: &Ring<Arc<Event>>| -> Vec<Arc<Event>> {
            ring.iter()
                .filter(|e| e.id > since && mask.wants(e.kind))
                .cloned()
                .collect()
        };
        let mut out = pick(&r.general);
        out.extend(pick(&r.disk));
        out.sort_by_key(|e| e.id);
        out
    }

    /// Like [`Bus::since`], but waits up to `timeout` for a first event.
    pub async fn wait(&self, since: u64, mask: &Mask, timeout: Duration) -> Vec<Arc<Event>> {
        let mut latest = self.latest.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.since(since, mask);
            if !got.is_empty() {
                return got;
            }
            match tokio::time::timeout_at(deadline, latest.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Vec::new(),
            }
        }
    }

    #[cfg(test)]
    pub fn last_id(&self) -> u64 {
        *self.latest.borrow()
    }

    pub fn set_labels(&self, config: &crate::config::Config) {
        let map = config
            .folders
            .iter()
            .map(|f| (f.id.clone(), f.label.clone()))
            .collect();
        *self.labels.locked() = map;
    }

    pub fn label(&self, folder: &str) -> String {
        self.labels
            .locked()
            .get(folder)
            .cloned()
            .unwrap_or_default()
    }
}

/// One node's events and what it records beside them.
pub struct Events {
    pub bus: Bus,
    /// Log lines, errors, device and folder statistics; shared with the
    /// log subscriber, which feeds it every line.
    pub records: Arc<record::Records>,
    /// Files being pulled, for `DownloadProgress`.
    pub progress: progress::Progress,
}

impl Default for Events {
    fn default() -> Self {
        Events::new(Arc::default())
    }
}

impl Events {
    pub fn new(records: Arc<record::Records>) -> Events {
        Events {
            bus: Bus::new(RING_CAPACITY),
            records,
            progress: Default::default(),
        }
    }

    pub fn emit(&self, kind: Kind, data: Value) {
        self.bus.emit(kind, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_never_loses_or_repeats_within_the_buffer() {
        let bus = Bus::new(100);
        let mut seen = Vec::new();
        let mut since = 0;
        for round in 0..20u64 {
            for i in 0..(round % 7 + 1) {
                let kind = if i % 3 == 0 {
                    Kind::LocalChangeDetected
                } else {
                    Kind::StateChanged
                };
                bus.emit(kind, json!({"round": round, "i": i}));
            }
            let got = bus.since(since, &Mask::Only(Kind::ALL.to_vec()));
            for e in &got {
                seen.push(e.id);
            }
            since = got.last().map_or(since, |e| e.id);
        }
        let expected: Vec<u64> = (1..=bus.last_id()).collect();
        assert_eq!(seen, expected);
        // The default mask leaves the disk events out, the disk mask keeps only them.
        assert!(bus
            .since(0, &Mask::Default)
            .iter()
            .all(|e| !e.kind.is_disk()));
        assert!(bus.since(0, &Mask::Disk).iter().all(|e| e.kind.is_disk()));
    }

    #[test]
    fn ten_thousand_events_without_a_reader_stay_bounded() {
        let bus = Bus::new(RING_CAPACITY);
        for i in 0..10_000u64 {
            bus.emit(Kind::LocalIndexUpdated, json!({"folder": "f", "items": i}));
            bus.emit(Kind::LocalChangeDetected, json!({"path": i.to_string()}));
        }
        let r = bus.rings.lock().unwrap();
        assert_eq!(r.general.len(), RING_CAPACITY);
        assert_eq!(r.disk.len(), RING_CAPACITY);
        assert!(r.general.capacity() < 2 * RING_CAPACITY);
        drop(r);
        let all = bus.since(0, &Mask::Only(Kind::ALL.to_vec()));
        assert_eq!(all.len(), 2 * RING_CAPACITY);
        assert_eq!(all.last().unwrap().id, 20_000);
    }

    #[tokio::test]
    async fn long_poll_wakes_on_a_matching_event() {
        let bus = Arc::new(Bus::new(10));
        let b2 = bus.clone();
        let waiter = tokio::spawn(async move {
            b2.wait(
                0,
                &Mask::Only(vec![Kind::ItemFinished]),
                Duration::from_secs(10),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.emit(Kind::ItemStarted, json!({}));
        bus.emit(Kind::ItemFinished, json!({"item": "a"}));
        let got = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, Kind::ItemFinished);
        let none = bus.wait(2, &Mask::Default, Duration::from_millis(50)).await;
        assert!(none.is_empty());
    }
}

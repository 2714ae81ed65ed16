//! The server's periodic work: not-found trackers, the rate limiters'
//! sweep, and the embedded store's expiry and snapshots. Each loop returns
//! as soon as its [`Shutdown`] is cancelled.

use std::sync::Arc;
use std::time::Duration;

use daemon::Shutdown;

use crate::handlers::App;
use crate::store::memory::MemoryStore;
use crate::store::{Now, Store};

/// Not-found trackers adjust once per this interval.
const TRACKER_TICK: Duration = Duration::from_secs(1);
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
const LIMITER_SWEEP: Duration = Duration::from_secs(10);

/// Timers every store needs: not-found trackers and the rate limiter sweep.
pub async fn periodic<S: Store>(app: Arc<App<S>>, stop: Shutdown) {
    let mut tick = tokio::time::interval(TRACKER_TICK);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        n += 1;
        for (name, t) in [
            ("seenTracker", &app.seen_tracker),
            ("notSeenTracker", &app.unseen_tracker),
        ] {
            t.tick(TRACKER_TICK.as_secs_f64());
            app.metrics
                .retry_after
                .get_or_create(&[("name", name)])
                .set(t.delay());
        }
        if n.is_multiple_of(LIMITER_SWEEP.as_secs()) {
            if let Some(l) = &app.limiter {
                app.metrics.rate_limiter_clients.set(l.sweep() as i64);
            }
            if let Some(l) = &app.new_device_limiter {
                l.sweep();
            }
        }
        if let Some(current) = app.store.current_devices() {
            if n.is_multiple_of(10) {
                app.metrics
                    .database_keys
                    .get_or_create(&[("category", "current")])
                    .set(current as i64);
            }
        }
    }
}

/// Expiry and snapshots of the embedded store. The blocking passes run as
/// tasks of `tasks` and are awaited here, so a stop never cuts one short;
/// the final snapshot is the caller's, once every request has ended.
pub async fn memory_maintenance(
    app: Arc<App<MemoryStore>>,
    flush_every: Duration,
    tasks: Shutdown,
) {
    let mut expiry = tokio::time::interval(EXPIRY_INTERVAL);
    let mut flush = tokio::time::interval(flush_every.max(Duration::from_secs(1)));
    flush.tick().await;
    loop {
        tokio::select! {
            _ = expiry.tick() => expire(&app, &tasks).await,
            _ = flush.tick() => snapshot(&app, &tasks).await,
            _ = tasks.cancelled() => return,
        }
    }
}

async fn expire(app: &Arc<App<MemoryStore>>, tasks: &Shutdown) {
    let a = app.clone();
    if let Ok(current) = tasks
        .spawn_blocking(move || a.store.expire(Now::system()))
        .await
    {
        let keys = &app.metrics.database_keys;
        keys.get_or_create(&[("category", "current")])
            .set(current as i64);
        let (records, bytes) = app.store.usage();
        keys.get_or_create(&[("category", "all")])
            .set(records as i64);
        app.metrics.store_bytes.set(bytes as i64);
    }
}

async fn snapshot(app: &Arc<App<MemoryStore>>, tasks: &Shutdown) {
    let a = app.clone();
    let t = std::time::Instant::now();
    match tasks
        .spawn_blocking(move || a.store.write_snapshot(false))
        .await
    {
        Ok(Ok(Some(n))) => {
            app.metrics.write_seconds.set(t.elapsed().as_secs_f64());
            app.metrics.last_written.set(Now::system().secs() as f64);
            tracing::debug!(records = n, "snapshot written");
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write the snapshot; will retry"),
        Err(e) => tracing::error!(error = %e, "snapshot task failed"),
    }
}

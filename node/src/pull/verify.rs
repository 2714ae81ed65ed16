//! Fetched blocks verified and written into their temp files by a few
//! blocking workers. Blocks arrive in bursts (up to 64 requests are in
//! flight), and a worker hashes whatever has arrived together in SIMD lanes
//! (`proto::bep::blocks::sha256_each`), which costs about half as much per
//! block as hashing them one by one; it never waits for a batch to fill.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use proto::bep::blocks::sha256_each;
use proto::bep::wire::BlockInfo;
use tokio::sync::{mpsc, oneshot};

use super::disk;

/// A temp file that fetched blocks are written into.
pub struct TempFile {
    pub file: Arc<fs::File>,
    pub path: PathBuf,
    /// Bytes written since the kernel was last asked to start writing
    /// them out.
    unflushed: AtomicU64,
}

/// Written data is handed to the disk every this many bytes, so that the
/// final fsync of a large file waits for the last few MiB only, not for
/// all of it (the disk works while the network does).
const WRITEBACK_EVERY: u64 = 8 << 20;

impl TempFile {
    pub fn new(file: Arc<fs::File>, path: PathBuf) -> TempFile {
        TempFile {
            file,
            path,
            unflushed: AtomicU64::new(0),
        }
    }

    fn write(&self, data: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        let len = data.len() as u64;
        let before = self.unflushed.fetch_add(len, Ordering::Relaxed);
        if before < WRITEBACK_EVERY && before + len >= WRITEBACK_EVERY {
            self.unflushed.store(0, Ordering::Relaxed);
            disk::start_writeback(&self.file);
        }
        Ok(())
    }
}

struct Job {
    data: Vec<u8>,
    block: BlockInfo,
    into: Arc<TempFile>,
    /// Whether the data matched (and was written); Err if the write failed.
    done: oneshot::Sender<Result<bool>>,
}

/// Blocks hashed together at most (the widest SIMD lanes).
const BATCH: usize = 16;

/// The workers of one pull round; they stop when this is dropped.
pub struct Verifier {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Verifier {
    /// Starts `workers` workers on the blocking pool.
    pub fn start(workers: usize) -> Verifier {
        let (jobs, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            let rx = rx.clone();
            tokio::task::spawn_blocking(move || work(&rx));
        }
        Verifier { jobs }
    }

    /// Verifies `data` against `block` and, if it matches, writes it at the
    /// block's offset of `into`. `Ok(false)`: the data does not match (the
    /// caller tries another device); `Err`: the write failed.
    pub async fn verify_and_write(
        &self,
        data: Vec<u8>,
        block: BlockInfo,
        into: Arc<TempFile>,
    ) -> Result<bool> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job {
                data,
                block,
                into,
                done,
            })
            .map_err(|_| anyhow!("block verification stopped"))?;
        wait.await
            .map_err(|_| anyhow!("block verification stopped"))?
    }
}

fn work(rx: &Mutex<mpsc::UnboundedReceiver<Job>>) {
    loop {
        let batch = {
            // Idle workers queue on the lock; the one holding it waits for
            // the next job, then takes whatever else has arrived.
            let mut rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let slices: Vec<&[u8]> = batch.iter().map(|j| j.data.as_slice()).collect();
        let mut digests = vec![[0u8; 32]; slices.len()];
        sha256_each(&slices, &mut digests);
        for (job, digest) in batch.into_iter().zip(digests) {
            let matches = job.data.len() == job.block.size.max(0) as usize
                && digest[..] == job.block.hash[..];
            let result = if matches {
                job.into
                    .write(&job.data, job.block.offset.max(0) as u64)
                    .map(|()| true)
            } else {
                Ok(false)
            };
            // The requester may be gone (the file failed): nothing to tell.
            let _ = job.done.send(result);
        }
    }
}

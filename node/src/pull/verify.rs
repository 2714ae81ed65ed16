//! Fetched blocks verified and written into their temp files by a few
//! blocking workers. Blocks arrive in bursts (up to 64 requests are in
//! flight), and a worker hashes whatever has arrived together in SIMD lanes
//! (`proto::bep::blocks::sha256_each`), which costs about half as much per
//! block as hashing them one by one; it never waits for a batch to fill.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{anyhow, Context, Result};
use proto::bep::blocks::sha256_each;
use proto::bep::wire::BlockInfo;
use tokio::sync::{mpsc, oneshot};

use super::disk;
use daemon::sync::{MutexExt, RwLockExt};

/// A temp file that fetched blocks are written into.
pub struct TempFile {
    file: Arc<fs::File>,
    path: PathBuf,
    /// Bytes written since the kernel was last asked to start writing
    /// them out.
    unflushed: AtomicU64,
    /// False once the file's pull has ended: a block verified after that
    /// (its request abandoned when another block failed) is not written,
    /// because by then a later pull of the same name, perhaps of another
    /// version, may be reusing this temp file. Read-held while writing
    /// (blocks of one file are written by several workers at once).
    open: RwLock<bool>,
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
            open: RwLock::new(true),
        }
    }

    /// No block is written after this returns.
    pub fn close(&self) {
        *self.open.write_locked() = false;
    }

    /// Writes `data` at `offset`; false if the file was closed.
    fn write(&self, data: &[u8], offset: u64) -> Result<bool> {
        let open = self.open.read_locked();
        if !*open {
            return Ok(false);
        }
        self.file
            .write_all_at(data, offset)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        let len = data.len() as u64;
        let before = self.unflushed.fetch_add(len, Ordering::Relaxed);
        if before < WRITEBACK_EVERY && before + len >= WRITEBACK_EVERY {
            self.unflushed.store(0, Ordering::Relaxed);
            disk::start_writeback(&self.file);
        }
        Ok(true)
    }
}

struct Job {
    data: Vec<u8>,
    block: BlockInfo,
    into: Arc<TempFile>,
    /// Whether the data matched and was written; Err if the write failed.
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
    /// caller tries another device) or `into` was closed; `Err`: the write
    /// failed.
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
            let mut rx = rx.locked();
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
                job.into.write(&job.data, job.block.offset.max(0) as u64)
            } else {
                Ok(false)
            };
            // The requester may be gone (the file failed): nothing to tell.
            let _ = job.done.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::bep::blocks::hash_block;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_matching_blocks_are_written_and_none_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let file = Arc::new(fs::File::create(&path).unwrap());
        let into = Arc::new(TempFile::new(file, path.clone()));
        let v = Verifier::start(2);
        // Enough blocks at once to fill SIMD lanes, each checked alone.
        let blocks: Vec<(Vec<u8>, BlockInfo)> = (0..40u8)
            .map(|i| {
                let data = vec![i + 1; 1000 + usize::from(i)];
                let b = hash_block(u64::from(i) * 2000, &data);
                (data, b)
            })
            .collect();
        let results =
            futures_util::future::join_all(blocks.iter().enumerate().map(|(i, (d, b))| {
                // Every fifth block arrives damaged.
                let mut data = d.clone();
                if i % 5 == 0 {
                    data[7] ^= 1;
                }
                v.verify_and_write(data, b.clone(), into.clone())
            }))
            .await;
        let on_disk = fs::read(&path).unwrap();
        for (i, ((d, b), r)) in blocks.iter().zip(results).enumerate() {
            let at = b.offset as usize;
            if i % 5 == 0 {
                assert!(!r.unwrap(), "damaged block {i} accepted");
                assert!(on_disk.len() < at + d.len() || on_disk[at..at + d.len()] != d[..]);
            } else {
                assert!(r.unwrap(), "good block {i} refused");
                assert_eq!(&on_disk[at..at + d.len()], &d[..]);
            }
        }
        // Closed: a good block is no longer written.
        into.close();
        let (d, b) = (vec![0xAB; 500], hash_block(100_000, &[0xAB; 500]));
        assert!(!v.verify_and_write(d, b, into.clone()).await.unwrap());
        assert_eq!(fs::read(&path).unwrap(), on_disk);
    }
}

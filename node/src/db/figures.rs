//! A folder's figures as the REST API and events report them: totals of
//! the global state and of what is needed, our own entries' counts, and a
//! device's completion.
//! Plain data, computed from the index (`pull::need`, `db`).

/// Counts of the global state and of what we need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub global_files: u64,
    pub global_dirs: u64,
    pub global_symlinks: u64,
    pub global_deleted: u64,
    pub global_bytes: u64,
    pub need_files: u64,
    pub need_dirs: u64,
    pub need_symlinks: u64,
    pub need_deletes: u64,
    pub need_bytes: u64,
}

impl Totals {
    pub fn need_items(&self) -> u64 {
        self.need_files + self.need_dirs + self.need_symlinks + self.need_deletes
    }
}

/// Counts of our own entries (`localFiles`… of `/rest/db/status`): the
/// deleted ones are counted apart from their kind, and the bytes are of
/// the files that are not deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LocalCounts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub deleted: u64,
    pub bytes: u64,
}

impl LocalCounts {
    pub fn items(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.deleted
    }
}

/// How far a device (or we) is from the global state, as
/// `/rest/db/completion` reports it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Completion {
    pub completion: f64,
    pub global_bytes: u64,
    pub global_items: u64,
    pub need_bytes: u64,
    pub need_items: u64,
    pub need_deletes: u64,
}

impl Completion {
    /// Fills in the percentage, the way Syncthing rounds the corner cases.
    pub fn finish(mut self) -> Completion {
        let pending = self.need_items > 0 || self.need_deletes > 0;
        self.completion = if self.global_bytes == 0 || self.need_bytes == 0 {
            // Nothing (or no bytes) missing: 100, or 95 while items or
            // deletions are still outstanding, like Syncthing.
            if pending {
                95.0
            } else {
                100.0
            }
        } else {
            100.0 * (1.0 - self.need_bytes as f64 / self.global_bytes as f64)
        };
        self
    }
}

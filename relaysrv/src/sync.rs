//! Locks that survive a panic in another holder.

use std::sync::{Mutex, MutexGuard};

/// A poisoned lock only means another task panicked while holding it; the
/// maps stay consistent (each update is a single insert or remove), so
/// carry on rather than take the whole relay down.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! Bounded polling.

use std::time::{Duration, Instant};

/// Calls `f` every `every` until it returns `Some`, for at most `limit`.
pub fn until<T>(limit: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16, limit: Duration) -> bool {
    until(limit, Duration::from_millis(50), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .is_some()
}

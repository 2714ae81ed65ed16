//! Stopping a program: the signals that ask for it, and [`Shutdown`], which
//! owns every task a program spawns so that stopping can be *awaited*.
//!
//! The discipline every program follows: a task is spawned through
//! [`Shutdown::spawn`] (or holds a [`Shutdown::token`] clone and is awaited
//! by whoever spawned it), watches [`Shutdown::cancelled`] at its await
//! points, and returns; [`Shutdown::stop`] cancels and then waits for all of
//! them. Nothing sleeps "long enough" at exit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// SIGTERM (orchestrators) and SIGINT (Ctrl-C), listened for from the
/// moment [`Signals::install`] returns. A program installs them before it
/// opens its ports: a signal that came between the two would otherwise
/// kill it with the default action instead of stopping it cleanly.
pub struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Registers the handlers now (needs the tokio runtime).
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Signals {
                    handlers: Some((term, int)),
                },
                _ => {
                    tracing::warn!("cannot install signal handlers; falling back to Ctrl-C only");
                    Signals { handlers: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.handlers {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on SIGTERM or SIGINT, listening from the first poll on (see
/// [`Signals`] to listen from an earlier moment).
pub async fn signal() {
    Signals::install().recv().await
}

/// The tasks of one running program (or one component of it) and the
/// signal that asks them to stop. Cheap to clone: clones share both.
///
/// A child ([`Shutdown::child`]) is cancelled with its parent but can also
/// be stopped alone, with its own tasks: a connection, a folder.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

/// What [`Shutdown::stop`] found when its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("{remaining} task(s) still running {waited:?} after the stop was asked")]
pub struct StopTimedOut {
    pub remaining: usize,
    pub waited: Duration,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A component that stops with this one, or on its own.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tasks: TaskTracker::new(),
        }
    }

    /// The cancellation signal, for code that only needs to watch it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves once the stop was asked.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Asks every task to stop; does not wait (see [`Shutdown::stop`]).
    pub fn cancel(&self) {
        self.token.cancel()
    }

    /// Spawns a task owned by this shutdown: [`Shutdown::stop`] waits for it.
    /// The task must return once [`Shutdown::cancelled`] resolves.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Spawns a task owned by this shutdown that is simply dropped at its
    /// current await point once the stop is asked: for loops with nothing
    /// to say on the way out (a periodic announcement, an accept loop).
    pub fn spawn_until_cancelled<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(Discard {
            inner: self.until_cancelled(task),
        })
    }

    /// `work`, or `None` once the stop is asked (then `work` is dropped at
    /// its current await point).
    ///
    /// A plain future, not an `async fn`: an `async fn` taking `work` by
    /// value keeps the moved-from argument in its state beside the copy it
    /// polls, doubling the memory of every connection wrapped this way.
    pub fn until_cancelled<F: Future>(&self, work: F) -> UntilCancelled<F> {
        UntilCancelled {
            cancelled: self.token.clone().cancelled_owned(),
            work,
        }
    }

    /// Runs blocking work owned by this shutdown (a scan, a disk write):
    /// [`Shutdown::stop`] waits for it too, so it must check
    /// [`Shutdown::is_cancelled`] often enough to end in time.
    pub fn spawn_blocking<F, T>(&self, work: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.tasks.spawn_blocking(work)
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Waits until every owned task has returned, without asking them to
    /// (for a component that ends on its own, once cancelled elsewhere).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        // Spawning stays possible for a later stop of a restarted component.
        self.tasks.reopen();
    }

    /// Asks every task to stop and waits for them, at most `deadline`.
    pub async fn stop(&self, deadline: Duration) -> Result<(), StopTimedOut> {
        self.cancel();
        self.tasks.close();
        let done = tokio::time::timeout(deadline, self.tasks.wait()).await;
        match done {
            Ok(()) => Ok(()),
            Err(_) => Err(StopTimedOut {
                remaining: self.tasks.len(),
                waited: deadline,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Shutdown::until_cancelled`].
    pub struct UntilCancelled<F> {
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for UntilCancelled<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The stop first: a busy task must not outrun it.
        if this.cancelled.poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        this.work.poll(cx).map(Some)
    }
}

pin_project_lite::pin_project! {
    /// A task's result dropped (spawned tasks of `spawn_until_cancelled`).
    struct Discard<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Discard<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_waits_for_every_task_to_return() {
        let s = Shutdown::new();
        let ended = Arc::new(AtomicUsize::new(0));
        for i in 0..8u64 {
            let (s2, ended) = (s.clone(), ended.clone());
            s.spawn(async move {
                s2.cancelled().await;
                // Some cleanup that takes a while after the signal.
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        s.stop(Duration::from_secs(10)).await.unwrap();
        assert_eq!(ended.load(Ordering::SeqCst), 8);
        assert_eq!(s.running(), 0);
    }

    #[tokio::test]
    async fn until_cancelled_stores_the_work_once() {
        let s = Shutdown::new();
        let work = async {
            let buf = [7u8; 4096];
            tokio::task::yield_now().await;
            buf[0]
        };
        let size = std::mem::size_of_val(&work);
        let wrapped = s.until_cancelled(work);
        // The work plus a cancellation future: never a second copy.
        assert!(
            std::mem::size_of_val(&wrapped) < size + 1024,
            "{size} -> {}",
            std::mem::size_of_val(&wrapped)
        );
        assert_eq!(wrapped.await, Some(7));
        s.cancel();
        assert_eq!(s.until_cancelled(std::future::pending::<()>()).await, None);
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_reported() {
        let s = Shutdown::new();
        s.spawn(std::future::pending::<()>());
        let e = s.stop(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e.remaining, 1);
    }

    #[tokio::test]
    async fn a_child_stops_alone_or_with_its_parent() {
        let parent = Shutdown::new();
        let a = parent.child();
        let b = parent.child();
        a.stop(Duration::from_secs(1)).await.unwrap();
        assert!(a.is_cancelled() && !b.is_cancelled() && !parent.is_cancelled());
        let b2 = b.clone();
        b.spawn(async move { b2.cancelled().await });
        parent.cancel();
        b.wait().await;
        assert!(b.is_cancelled());
    }
}

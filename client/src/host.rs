//! One tokio task per client: quinn's endpoint and connection drivers run
//! inside the SDK's connection task instead of as tasks of their own.
//!
//! Why: a request reaching a responder used to cross quinn's endpoint driver,
//! quinn's connection driver, the SDK's reader and the application before the
//! application's reply woke the SDK's writer. tokio's multi-thread scheduler
//! runs at most three tasks in a row from a worker's LIFO slot; the fourth
//! task's wake-up goes through the run queue and wakes the sibling worker,
//! which costs a thread wake-up per reply (docs/BENCHMARKS.md, *Request/reply:
//! the responder's fourth hop*). With the drivers hosted here, the chain is
//! this task → the application → this task.
//!
//! quinn takes a [`quinn::Runtime`] for spawning its drivers; [`Hosted`] is
//! tokio's runtime with `spawn` replaced: the future goes to the [`Host`],
//! which polls it whenever [`Host::run_until`] runs (the SDK's connection
//! task, or the caller of `Client::connect` during the first handshake).
//!
//! A child woken while the host is polling is polled again in the same pass
//! (no self-wake of the tokio task: a task that wakes itself is rescheduled
//! through the run queue, which is what this avoids). A pass is bounded
//! ([`MAX_PASSES`]); a host still busy after it yields like any task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

/// Rounds over the ready children per poll before the host yields to the
/// scheduler (a child that keeps waking itself must not hold the worker).
const MAX_PASSES: usize = 32;

type Child = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where quinn's drivers run: see the module documentation. Cloning shares it.
#[derive(Clone, Default)]
pub(crate) struct Host(Arc<Inner>);

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Futures spawned and not yet taken into a running host's set.
    spawned: Mutex<Vec<Child>>,
    /// The task running the host now (woken by children outside its poll).
    waker: Mutex<Option<Waker>>,
    /// The host is inside its poll loop: a child's wake-up only sets its
    /// flag, the loop sees it (see `Inner::wake`).
    polling: AtomicBool,
    /// Kept while no `run_until` runs (between `Client::connect`'s handshake
    /// and the connection task's first poll); each entry has its flag.
    parked: Mutex<Vec<(Child, Arc<Flag>)>>,
    /// [`Host::shutdown`] ran: nothing is kept or hosted any more.
    shut: AtomicBool,
}

/// A child's (or the hosted future's) "woken since last polled".
struct Flag {
    ready: AtomicBool,
    host: Arc<Inner>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::SeqCst);
        self.host.wake();
    }
}

impl Inner {
    /// Wakes the hosting task unless it is polling (then the loop, which
    /// rescans the flags after leaving `polling`, sees the child's flag).
    fn wake(&self) {
        if !self.polling.load(Ordering::SeqCst)
            && let Some(w) = self.waker.lock().as_ref()
        {
            w.wake_by_ref();
        }
    }
}

impl Host {
    /// The runtime to hand quinn: tokio's, with `spawn` going to this host.
    pub(crate) fn runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(Hosted(self.clone()))
    }

    fn spawn(&self, fut: Child) {
        if self.0.shut.load(Ordering::SeqCst) {
            return; // the client is gone: nothing would poll it
        }
        self.0.spawned.lock().push(fut);
        self.0.wake();
    }

    fn flag(&self) -> Arc<Flag> {
        Arc::new(Flag {
            ready: AtomicBool::new(true),
            host: Arc::clone(&self.0),
        })
    }

    /// Drops every hosted future, now or (one being polled) when its
    /// `run_until` ends, and every one spawned later. quinn's drivers hold
    /// the endpoint, whose runtime holds this host: without this, a closed
    /// client's drivers would keep each other alive.
    pub(crate) fn shutdown(&self) {
        self.0.shut.store(true, Ordering::SeqCst);
        let parked = std::mem::take(&mut *self.0.parked.lock());
        let spawned = std::mem::take(&mut *self.0.spawned.lock());
        drop((parked, spawned));
    }

    /// Runs `fut` to completion while polling every hosted future. What is
    /// hosted stays hosted when `fut` completes (a later `run_until` goes on
    /// polling it); hosted futures that complete are dropped. One
    /// `run_until` at a time per host (the SDK's first connect, then its
    /// connection task): a second would find the hosted futures taken.
    pub(crate) async fn run_until<T>(&self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let main = self.flag();
        let main_waker = Waker::from(Arc::clone(&main));
        let mut children: Vec<(Child, Arc<Flag>)> = std::mem::take(&mut *self.0.parked.lock());
        // Whatever happens to this future (completion or drop), the hosted
        // futures go back to `parked` for the next `run_until`.
        struct Park<'a> {
            host: &'a Inner,
            children: &'a mut Vec<(Child, Arc<Flag>)>,
        }
        impl Drop for Park<'_> {
            fn drop(&mut self) {
                self.host.polling.store(false, Ordering::SeqCst);
                *self.host.waker.lock() = None;
                if self.host.shut.load(Ordering::SeqCst) {
                    self.children.clear();
                } else {
                    self.host.parked.lock().append(self.children);
                }
            }
        }
        let guard = Park {
            host: &self.0,
            children: &mut children,
        };
        std::future::poll_fn(move |cx| {
            let inner = guard.host;
            {
                let mut w = inner.waker.lock();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            inner.polling.store(true, Ordering::SeqCst);
            for _ in 0..MAX_PASSES {
                // Out of tokio's budget, a hosted future's resources report
                // Pending and wake it again at once: polling on would spin.
                if !tokio::task::coop::has_budget_remaining() {
                    break;
                }
                guard.children.extend(
                    std::mem::take(&mut *inner.spawned.lock())
                        .into_iter()
                        .map(|f| (f, self.flag())),
                );
                let mut any = poll_ready(guard.children);
                if main.ready.swap(false, Ordering::SeqCst) {
                    any = true;
                    if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(&main_waker))
                    {
                        return Poll::Ready(v);
                    }
                }
                if !any {
                    // Leave `polling`, then look once more: a wake-up that
                    // saw `polling` set has set its flag before this load.
                    inner.polling.store(false, Ordering::SeqCst);
                    let again = main.ready.load(Ordering::SeqCst)
                        || !inner.spawned.lock().is_empty()
                        || guard
                            .children
                            .iter()
                            .any(|(_, f)| f.ready.load(Ordering::SeqCst));
                    if !again {
                        return Poll::Pending;
                    }
                    inner.polling.store(true, Ordering::SeqCst);
                }
            }
            // Still busy (or out of budget): let the scheduler run others,
            // and come back.
            inner.polling.store(false, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }
}

/// Shuts its host down when dropped: whatever ends the task or call that
/// holds it (completion, an error, cancellation, an abort).
pub(crate) struct ShutdownOnDrop(pub(crate) Host);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Polls every hosted future whose flag is set, dropping those that
/// finish; whether any was polled.
fn poll_ready(children: &mut Vec<(Child, Arc<Flag>)>) -> bool {
    let mut any = false;
    children.retain_mut(|(child, flag)| {
        if !flag.ready.swap(false, Ordering::SeqCst) {
            return true;
        }
        any = true;
        !poll_child(child, flag)
    });
    any
}

/// Polls one hosted future; `true` once it is done. One that panics is done
/// too: dropped with a log line while the others go on, as when each was a
/// task of its own.
fn poll_child(child: &mut Child, flag: &Arc<Flag>) -> bool {
    let w = Waker::from(Arc::clone(flag));
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        child.as_mut().poll(&mut Context::from_waker(&w))
    }));
    match polled {
        Ok(p) => p.is_ready(),
        Err(panic) => {
            let what = slim_framed::task::panic_message(&*panic).unwrap_or("(not a string)");
            tracing::error!(
                panic = %what,
                "a QUIC driver of this client panicked and was stopped; its connection will fail"
            );
            true
        }
    }
}

/// quinn's tokio runtime with `spawn` going to a [`Host`].
#[derive(Debug)]
struct Hosted(Host);

impl quinn::Runtime for Hosted {
    fn new_timer(&self, i: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(i)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        t: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(t)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// Counts how often the tokio task polls `fut`.
    struct Polls<'a, F> {
        fut: Pin<&'a mut F>,
        n: &'a AtomicUsize,
    }

    impl<F: Future> Future for Polls<'_, F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.n.fetch_add(1, Ordering::SeqCst);
            self.fut.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn hosted_futures_run_while_the_host_runs_and_wait_between_runs() {
        let host = Host::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        host.spawn(Box::pin(async move {
            tx.send(1).unwrap();
            go_rx.await.unwrap();
            tx.send(2).unwrap();
        }));
        assert!(rx.try_recv().is_err(), "nothing runs before a host runs");
        assert_eq!(host.run_until(rx.recv()).await, Some(1));
        // The child now waits, parked: its wake-up is kept for the next run.
        go_tx.send(()).unwrap();
        assert!(rx.try_recv().is_err(), "a parked child does not run");
        assert_eq!(host.run_until(rx.recv()).await, Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_woken_from_another_thread_wakes_the_host() {
        let host = Host::default();
        let (tx, rx) = oneshot::channel::<u32>();
        let (done_tx, done_rx) = oneshot::channel::<u32>();
        host.spawn(Box::pin(async move {
            let v = rx.await.unwrap();
            done_tx.send(v + 1).unwrap();
        }));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(41).unwrap();
        });
        assert_eq!(host.run_until(done_rx).await.unwrap(), 42);
        sender.join().unwrap();
    }

    #[tokio::test]
    async fn a_child_woken_during_the_hosts_poll_runs_in_that_poll() {
        let host = Host::default();
        let (a_tx, a_rx) = oneshot::channel::<()>();
        let (b_tx, b_rx) = oneshot::channel::<()>();
        // The first child waits for the second, which wakes it after the
        // first was polled: the first must be polled again (a second round)
        // within the same poll of the task, then it completes the wait.
        host.spawn(Box::pin(async move {
            a_rx.await.unwrap();
            let _ = b_tx.send(());
        }));
        host.spawn(Box::pin(async move {
            let _ = a_tx.send(());
        }));
        let n = AtomicUsize::new(0);
        let run = std::pin::pin!(host.run_until(b_rx));
        let out = Polls { fut: run, n: &n }.await;
        assert!(out.is_ok());
        assert_eq!(
            n.load(Ordering::SeqCst),
            1,
            "the chain of wake-ups ran inside one poll of the task (no self-wake)"
        );
    }

    #[tokio::test]
    async fn a_child_that_always_wakes_itself_does_not_hold_the_host() {
        let host = Host::default();
        let spins = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&spins);
        host.spawn(Box::pin(std::future::poll_fn(move |cx| {
            s.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        })));
        let (tx, rx) = oneshot::channel::<()>();
        // Another task of the same (single-threaded) runtime must get to run.
        tokio::spawn(async move {
            let _ = tx.send(());
        });
        host.run_until(rx).await.unwrap();
        assert!(spins.load(Ordering::Relaxed) >= 1);
        host.shutdown();
    }

    #[tokio::test]
    async fn a_hosted_future_that_panics_is_dropped_and_the_rest_go_on() {
        let host = Host::default();
        host.spawn(Box::pin(async {
            panic!("hosted future fails");
        }));
        let (tx, rx) = oneshot::channel::<u32>();
        host.spawn(Box::pin(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
        }));
        assert_eq!(host.run_until(rx).await.unwrap(), 7);
        assert!(
            host.0.parked.lock().is_empty(),
            "both hosted futures are gone: one panicked, one finished"
        );
    }

    /// Hosts a future that never ends; the flag says when it was dropped.
    fn host_pending(host: &Host) -> Arc<AtomicBool> {
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let d = Dropped(Arc::clone(&dropped));
        host.spawn(Box::pin(async move {
            let _d = d;
            std::future::pending::<()>().await;
        }));
        dropped
    }

    #[tokio::test]
    async fn shutdown_drops_what_is_hosted() {
        let host = Host::default();
        let dropped = host_pending(&host);
        host.run_until(tokio::task::yield_now()).await;
        assert!(!dropped.load(Ordering::SeqCst), "parked, still alive");
        host.shutdown();
        assert!(dropped.load(Ordering::SeqCst), "dropped by shutdown");

        // Shut down while a `run_until` holds the children (a cancelled
        // connect, an aborted connection task): they go when it ends.
        let host = Host::default();
        let dropped = host_pending(&host);
        let h = host.clone();
        let run = host.run_until(async move {
            tokio::task::yield_now().await;
            let _g = ShutdownOnDrop(h);
            std::future::pending::<()>().await
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), run)
                .await
                .is_err()
        );
        assert!(dropped.load(Ordering::SeqCst), "dropped when the run ended");
        let after = host_pending(&host);
        assert!(
            after.load(Ordering::SeqCst),
            "a spawn after shutdown is dropped"
        );
    }
}

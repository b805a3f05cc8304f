//! The data plane's worker threads. Each runs its own single-threaded tokio runtime, and a
//! connection accepted on the HBONE port is handed to one of them, in turn, for its whole
//! life: its streams, the requests they carry and the upstream connections those requests
//! open all run on that thread, over that worker's own HBONE pool ([`PerWorker`]). HTTP
//! connections to endpoints are pooled for all workers (a service's `maxConnections` spans
//! them), each worker taking the ones its own runtime drives first.
//!
//! Why: on one multi-threaded runtime a request's four tasks (the downstream HBONE
//! connection, the stream's HTTP server, the upstream HTTP connection, the upstream HBONE
//! connection) wake each other across threads, and a wake-up across threads costs a futex
//! call and often a sleeping thread's wake-up, where one on the same thread is a queue push.
//! The control plane (xDS, certificates, admin, the accept loop) stays on the runtime that
//! started the waypoint.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tracing::warn;

thread_local! {
    /// The worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// One `T` per worker thread, so that each worker's connections share nothing on the hot
/// path with the others'.
pub struct PerWorker<T> {
    items: Box<[T]>,
}

impl<T> PerWorker<T> {
    /// `n` values (at least one), made by `make(worker)`.
    pub fn new(n: usize, make: impl FnMut(usize) -> T) -> Self {
        PerWorker {
            items: (0..n.max(1)).map(make).collect(),
        }
    }

    /// This thread's value: its worker's, or the first one's on a thread that is no worker
    /// (control tasks, and tests that run everything on one runtime).
    pub fn local(&self) -> &T {
        &self.items[current() % self.items.len()]
    }

    /// Every worker's value (for maintenance: idle sweeps, endpoint removal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

/// The worker this thread is (0 on a thread that is none).
pub fn current() -> usize {
    WORKER.get().unwrap_or(0)
}

type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Handles to the worker threads; work goes to them in turn. Dropping it lets each worker
/// finish once the work it was given has ended.
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Task>>,
    next: AtomicUsize,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting waypoint worker thread {worker}: {source}")]
pub struct StartError {
    worker: usize,
    source: std::io::Error,
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub fn start(n: usize) -> Result<Self, StartError> {
        let mut queues = Vec::with_capacity(n.max(1));
        for worker in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| StartError { worker, source })?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Task>();
            std::thread::Builder::new()
                .name(format!("waypoint-worker-{worker}"))
                .spawn(move || {
                    WORKER.set(Some(worker));
                    runtime.block_on(async move {
                        while let Some(task) = rx.recv().await {
                            tokio::spawn(task());
                        }
                    });
                })
                .map_err(|source| StartError { worker, source })?;
            queues.push(tx);
        }
        Ok(Workers {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Number of worker threads.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Runs the future `make` returns on the next worker, made there (so that sockets it
    /// registers belong to that worker's runtime).
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let task: Task = Box::new(move || Box::pin(make()));
        if self.queues[i].send(task).is_err() {
            warn!(worker = i, "waypoint worker thread is gone; work dropped");
        }
    }
}

/// Worker threads for `requested` (0: one per CPU the process may use).
pub fn count(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work goes to the workers in turn, each on its own thread, where `PerWorker::local`
    /// is that worker's value; off the workers it is the first's.
    #[tokio::test]
    async fn work_runs_on_each_worker_in_turn_with_its_own_value() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let values = std::sync::Arc::new(PerWorker::new(2, |i| i * 10));
        assert_eq!(
            *values.local(),
            0,
            "off the workers: the first worker's value"
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..4 {
            let (tx, values) = (tx.clone(), values.clone());
            workers.spawn(move || async move {
                let thread = std::thread::current().name().map(str::to_string);
                tx.send((thread, *values.local())).unwrap();
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.unwrap());
        }
        seen.sort();
        let worker = |i: usize| (Some(format!("waypoint-worker-{i}")), i * 10);
        assert_eq!(seen, [worker(0), worker(0), worker(1), worker(1)]);
    }
}

//! HBONE connections shared per key: in ztunnel the key is (source identity, destination
//! identity, destination address), so each stream reuses an established mTLS connection and
//! a new handshake happens only when no pooled connection has a free stream.
//!
//! The pool lock is taken once per stream (never per byte) and never across an await; first
//! connections to a key are single-flighted so a burst of streams makes one handshake.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{ConnectRequest, H2Stream, HboneConnection, HboneError};

/// Pool tuning.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Streams per connection before another connection is opened (capped by the peer's own
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: usize,
    /// A connection with no streams for this long is closed.
    pub idle_timeout: Duration,
    /// Streams that run at the same time are spread over up to this many connections per
    /// key, least-loaded first: one connection's TLS and HTTP/2 work runs on one thread, so
    /// concurrent bulk streams on a single connection use one core however many there are.
    /// 1 keeps every stream on one connection until it is full.
    pub spread: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(90),
            spread: 1,
        }
    }
}

struct Pooled {
    conn: HboneConnection,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Pooled {
    fn has_room(&self, limit: usize) -> bool {
        !self.conn.is_closed()
            && self.active.load(Ordering::Acquire) < limit.min(self.conn.max_streams().max(1))
    }
}

struct Slot {
    conns: Mutex<Vec<Arc<Pooled>>>,
    /// Held while dialing, so concurrent first streams share one handshake.
    dialing: tokio::sync::Mutex<()>,
}

/// A pool of HBONE connections keyed by `K`.
pub struct Pool<K> {
    slots: Arc<Mutex<HashMap<K, Arc<Slot>>>>,
    settings: PoolSettings,
}

impl<K> Clone for Pool<K> {
    fn clone(&self) -> Self {
        Pool {
            slots: self.slots.clone(),
            settings: self.settings,
        }
    }
}

/// A CONNECT stream checked out of the pool; it counts against its connection until dropped.
pub struct PooledStream {
    pub stream: H2Stream,
    /// Whether the stream rode an already-established connection.
    pub reused: bool,
    guard: StreamGuard,
}

impl PooledStream {
    /// Splits off the stream; the slot stays held until the returned guard is dropped.
    pub fn into_parts(self) -> (H2Stream, StreamGuard) {
        (self.stream, self.guard)
    }

    pub fn connection(&self) -> &HboneConnection {
        &self.guard.pooled.conn
    }
}

/// Releases a stream slot on drop.
pub struct StreamGuard {
    pooled: Arc<Pooled>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.pooled.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.pooled.idle_since.lock().expect("poisoned") = Instant::now();
        }
    }
}

impl<K> Pool<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Creates a pool and its idle reaper (which stops when the pool is dropped).
    pub fn new(settings: PoolSettings) -> Self {
        let pool = Pool {
            slots: Arc::new(Mutex::new(HashMap::new())),
            settings,
        };
        let weak = Arc::downgrade(&pool.slots);
        tokio::spawn(reap_idle(weak, settings.idle_timeout));
        pool
    }

    /// Opens a CONNECT stream for `req` on a pooled connection for `key`, dialing a new
    /// connection with `dial` when none has room. A pooled connection that cannot open the
    /// stream (its peer is draining, or it broke) is retired and the stream tried on the next
    /// one, then on a fresh dial: a restarting peer drains every connection to it at once,
    /// and a stream must not fail because the pool happened to hold more than one.
    pub async fn stream<D, F>(
        &self,
        key: &K,
        req: &ConnectRequest,
        dial: D,
    ) -> Result<PooledStream, HboneError>
    where
        D: FnOnce() -> F,
        F: Future<Output = Result<HboneConnection, HboneError>>,
    {
        let slot = self.slot(key);
        let spread = self.settings.spread;
        // Each pass that does not return retires one connection, so the passes end when the
        // pooled connections do; `dial` runs at most once, and every path after it returns.
        loop {
            let pooled = match self.checkout(&slot, spread) {
                Some(p) => p,
                None => {
                    let dialing = slot.dialing.lock().await;
                    // Someone else may have dialed while we waited.
                    match self.checkout(&slot, spread) {
                        Some(p) => p,
                        None => {
                            // Boxed: a dial (TCP, TLS and HTTP/2 handshakes) is a large
                            // future, and inline it would stay part of every pooled stream's
                            // task for the stream's whole life, idle or not.
                            let dial = Box::pin(dial());
                            return self.dial_and_open(&slot, dialing, req, dial).await;
                        }
                    }
                }
            };
            match self.open(pooled.clone(), req, true).await {
                Ok(s) => return Ok(s),
                // A refusal by the peer is an answer, not a broken connection.
                Err(e @ HboneError::Status(_)) => return Err(e),
                Err(_) => pooled.conn.retire(),
            }
        }
    }

    /// Pools the connection `dial` makes for `slot` (the caller holds its dial lock as
    /// `dialing`) and opens the stream on it.
    async fn dial_and_open<F>(
        &self,
        slot: &Slot,
        dialing: tokio::sync::MutexGuard<'_, ()>,
        req: &ConnectRequest,
        dial: Pin<Box<F>>,
    ) -> Result<PooledStream, HboneError>
    where
        F: Future<Output = Result<HboneConnection, HboneError>>,
    {
        match dial.await {
            Ok(conn) => {
                let pooled = Self::add(slot, conn);
                drop(dialing);
                self.open(pooled, req, false).await
            }
            // A dial made only to spread streams failed while a connection still has room:
            // the stream rides that one rather than failing.
            Err(e) => {
                drop(dialing);
                match self.checkout(slot, 1) {
                    Some(p) => self.open(p, req, true).await,
                    None => Err(e),
                }
            }
        }
    }

    /// Number of live connections (for tests and `/config_dump`).
    pub fn connection_count(&self) -> usize {
        let slots = self.slots.lock().expect("poisoned");
        slots
            .values()
            .map(|s| {
                s.conns
                    .lock()
                    .expect("poisoned")
                    .iter()
                    .filter(|c| !c.conn.is_closed())
                    .count()
            })
            .sum()
    }

    /// Streams open on each live connection for `key` (for tests and `/config_dump`).
    pub fn streams_per_connection(&self, key: &K) -> Vec<usize> {
        let Some(slot) = self.slots.lock().expect("poisoned").get(key).cloned() else {
            return Vec::new();
        };
        let conns = slot.conns.lock().expect("poisoned");
        conns
            .iter()
            .filter(|c| !c.conn.is_closed())
            .map(|c| c.active.load(Ordering::Acquire))
            .collect()
    }

    /// Closes every pooled connection (their open streams finish first).
    pub fn clear(&self) {
        self.slots.lock().expect("poisoned").clear();
    }

    fn slot(&self, key: &K) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("poisoned");
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    conns: Mutex::new(Vec::new()),
                    dialing: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Reserves a stream on the least-loaded connection with room, if any; none when every
    /// connection is busy and the key may have more than it has, up to `spread` (see
    /// [`PoolSettings::spread`]).
    fn checkout(&self, slot: &Slot, spread: usize) -> Option<Arc<Pooled>> {
        let mut conns = slot.conns.lock().expect("poisoned");
        conns.retain(|c| !c.conn.is_closed());
        let limit = self.settings.max_streams_per_connection;
        let pooled = conns
            .iter()
            .filter(|c| c.has_room(limit))
            .min_by_key(|c| c.active.load(Ordering::Acquire))?
            .clone();
        if pooled.active.load(Ordering::Acquire) > 0 && conns.len() < spread {
            return None;
        }
        pooled.active.fetch_add(1, Ordering::AcqRel);
        Some(pooled)
    }

    /// Puts a freshly dialed connection into `slot`, its first stream reserved.
    fn add(slot: &Slot, conn: HboneConnection) -> Arc<Pooled> {
        let pooled = Arc::new(Pooled {
            conn,
            active: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        let mut conns = slot.conns.lock().expect("poisoned");
        conns.retain(|c| !c.conn.is_closed());
        conns.push(pooled.clone());
        pooled
    }

    async fn open(
        &self,
        pooled: Arc<Pooled>,
        req: &ConnectRequest,
        reused: bool,
    ) -> Result<PooledStream, HboneError> {
        let guard = StreamGuard {
            pooled: pooled.clone(),
        };
        let stream = pooled.conn.connect(req).await?;
        Ok(PooledStream {
            stream,
            reused,
            guard,
        })
    }
}

async fn reap_idle<K: Hash + Eq>(slots: Weak<Mutex<HashMap<K, Arc<Slot>>>>, idle: Duration) {
    let period = (idle / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(slots) = slots.upgrade() else { return };
        let mut slots = slots.lock().expect("poisoned");
        slots.retain(|_, slot| {
            if slot.dialing.try_lock().is_err() {
                return true;
            }
            let mut conns = slot.conns.lock().expect("poisoned");
            conns.retain(|c| {
                let busy = c.active.load(Ordering::Acquire) > 0;
                let fresh = c.idle_since.lock().expect("poisoned").elapsed() < idle;
                !c.conn.is_closed() && (busy || fresh)
            });
            !conns.is_empty()
        });
    }
}

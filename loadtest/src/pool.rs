//! Connections carried over from one phase of a `mixed` run to the next.
//!
//! A connection is known by its role and its index: the index picks everything that makes it
//! what it is (its URL by `--spread`, its source address, its per-connection token), so a
//! connection parked as (client, 7) by one phase is exactly the connection the next phase's
//! (client, 7) would open. When a phase starts, the pool is told what the next phase will ask
//! for; when its runs end, their fleets park here the connections still open that the next
//! phase wants, instead of closing them (the others close as in any run). The next phase's
//! fleets take theirs at launch, and only the difference is ramped; what it did not take is
//! closed when it ends.
//!
//! While parked, a connection is read (and what arrives discarded) by a task of its own, so
//! server pings are answered and late events of the last phase do not pile up in the socket; a
//! connection the server closes meanwhile is dropped from the pool, and the phase that wanted it
//! opens a fresh one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Incoming, Role, Ws};

/// A connection's identity across phases.
pub type Key = (Role, usize);

/// One parked connection: its reader task hands it back when told to stop.
pub struct Parked {
    stop: CancellationToken,
    task: JoinHandle<Option<Ws>>,
    /// The phase that parked it.
    generation: u64,
}

impl Parked {
    /// Takes the connection back from its reader; `None` when the server closed it meanwhile.
    pub async fn resume(mut self) -> Option<Ws> {
        self.stop.cancel();
        (&mut self.task).await.ok().flatten()
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        if let Some(ws) = self.resume().await {
            client::close(ws, client::CLOSE_TIMEOUT).await;
        }
    }
}

impl Drop for Parked {
    /// A parked connection nobody took back: its reader ends and drops it.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The connections parked between phases.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<Parked>>>,
    /// How many connections of each key the next phase asks for, less those parked for it.
    next: Mutex<HashMap<Key, usize>>,
    /// The phase now running (0 before the first).
    generation: std::sync::atomic::AtomicU64,
    /// Closes started by the pool, awaited by [`Pool::close_all`].
    closing: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    pub fn new() -> Self {
        Pool::default()
    }

    /// Parks an open connection under `key` if the next phase wants it; otherwise hands it
    /// back (to be closed).
    pub fn park(&self, key: Key, mut ws: Ws) -> Option<Ws> {
        {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            match next.get_mut(&key) {
                Some(n) if *n > 0 => *n -= 1,
                _ => return Some(ws),
            }
        }
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => return Some(ws),
                    i = client::recv(&mut ws) => if let Incoming::Closed(_) = i {
                        return None;
                    },
                }
            }
        });
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        self.lock().entry(key).or_default().push(Parked {
            stop,
            task,
            generation,
        });
        None
    }

    /// Takes the parked connections of `role` among `indices` (one each, at most).
    pub fn claim(
        &self,
        role: Role,
        indices: impl Iterator<Item = usize>,
    ) -> HashMap<usize, Parked> {
        let mut idle = self.lock();
        if idle.is_empty() {
            return HashMap::new();
        }
        let mut out = HashMap::new();
        for index in indices {
            let key = (role, index);
            if let Some(list) = idle.get_mut(&key) {
                if let Some(p) = list.pop() {
                    out.insert(index, p);
                }
                if list.is_empty() {
                    idle.remove(&key);
                }
            }
        }
        out
    }

    /// A new phase starts that will ask for `wanted` (a key listed twice is wanted twice):
    /// the parked connections it will not ask for are closed now. `next`: what the phase after
    /// it will ask for (what its runs may park).
    pub fn begin_phase(&self, wanted: &[Key], next: &[Key]) {
        let count = |keys: &[Key]| {
            let mut n: HashMap<Key, usize> = HashMap::new();
            for k in keys {
                *n.entry(*k).or_default() += 1;
            }
            n
        };
        let need = count(wanted);
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = count(next);
        let surplus: Vec<Parked> = {
            let mut idle = self.lock();
            let mut surplus = Vec::new();
            idle.retain(|key, list| {
                let keep = need.get(key).copied().unwrap_or(0);
                while list.len() > keep {
                    if let Some(p) = list.pop() {
                        surplus.push(p);
                    }
                }
                !list.is_empty()
            });
            surplus
        };
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.close_in_background(surplus);
    }

    /// The phase is over: what earlier phases parked and it did not take is closed (those it
    /// parked itself wait for the next phase).
    pub fn end_phase(&self) {
        let now = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        let stale: Vec<Parked> = {
            let mut idle = self.lock();
            let mut stale = Vec::new();
            idle.retain(|_, list| {
                let (old, keep): (Vec<Parked>, Vec<Parked>) = std::mem::take(list)
                    .into_iter()
                    .partition(|p| p.generation < now);
                stale.extend(old);
                *list = keep;
                !list.is_empty()
            });
            stale
        };
        self.close_in_background(stale);
    }

    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Closes everything parked and waits (up to `limit`) for every close the pool started.
    pub async fn close_all(&self, limit: Duration) {
        let all: Vec<Parked> = self.lock().drain().flat_map(|(_, l)| l).collect();
        self.close_in_background(all);
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.closing.lock().unwrap_or_else(|e| e.into_inner()));
        let until = Instant::now() + limit;
        for h in handles {
            let abort = h.abort_handle();
            if tokio::time::timeout_at(until.into(), h).await.is_err() {
                abort.abort();
            }
        }
    }

    fn close_in_background(&self, parked: Vec<Parked>) {
        if parked.is_empty() {
            return;
        }
        let mut closing = self.closing.lock().unwrap_or_else(|e| e.into_inner());
        closing.retain(|h| !h.is_finished());
        for p in parked {
            closing.push(tokio::spawn(p.close()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Parked>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

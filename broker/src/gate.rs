//! The limits that hold before and at the upgrade: sockets still in their handshake (TLS and
//! request head), connection slots with a reserve for publishers, and per-address counts.
//!
//! A client address is counted by [`address_key`]: an IPv4 address (or an IPv4-mapped IPv6 one)
//! alone, an IPv6 address by its /64, since one host is routinely given a whole /64 and could
//! otherwise open connections from as many addresses as it likes.
//!
//! Every count is taken by a guard that gives it back when dropped, so a task that ends in any
//! way (answer, error, panic) cannot leak a slot.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Refused;

/// The key under which `ip` is counted: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Counts per address key, each bounded by a limit given at acquisition (0: no limit).
#[derive(Default)]
pub struct AddressCounts {
    counts: DashMap<IpAddr, usize>,
}

impl AddressCounts {
    /// Counts one more for `ip`'s key if it stays within `limit`.
    fn acquire(&self, ip: IpAddr, limit: usize) -> Option<IpAddr> {
        let key = address_key(ip);
        let mut n = self.counts.entry(key).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(key)
    }

    fn release(&self, key: IpAddr) {
        self.counts.remove_if_mut(&key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// How many are counted for `ip`'s key.
    pub fn get(&self, ip: IpAddr) -> usize {
        self.counts.get(&address_key(ip)).map_or(0, |n| *n)
    }
}

/// The limits of one broker, shared by its acceptor and handshakes.
pub struct Gate {
    pending: Arc<Semaphore>,
    pending_per_address: usize,
    pending_by_address: AddressCounts,
    /// Every connection takes one of these.
    slots: Arc<Semaphore>,
    /// Clients also take one of these: there are `publisherReserve` fewer, so that many slots
    /// stay free for publishers however many clients come.
    client_slots: Arc<Semaphore>,
    per_address: usize,
    by_address: AddressCounts,
}

/// Why the gate said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Every pending-handshake place is taken.
    Pending,
    /// This address has its share of pending handshakes.
    PendingPerAddress,
    /// Every connection slot (for this kind of connection) is taken.
    Slots,
    /// This address has its share of connections.
    PerAddress,
}

impl Closed {
    /// How it is counted in `broker_connections_refused_total`.
    pub fn refused(self) -> Refused {
        match self {
            Closed::Pending => Refused::PendingLimit,
            Closed::PendingPerAddress => Refused::PendingPerAddress,
            Closed::Slots => Refused::Limit,
            Closed::PerAddress => Refused::PerAddress,
        }
    }
}

/// The limits a [`Gate`] is built from.
pub struct GateLimits {
    pub max_pending: usize,
    pub max_pending_per_address: usize,
    pub max_connections: usize,
    pub publisher_reserve: usize,
    pub max_per_address: usize,
}

impl Gate {
    pub fn new(l: &GateLimits) -> Arc<Gate> {
        Arc::new(Gate {
            pending: Arc::new(Semaphore::new(l.max_pending)),
            pending_per_address: l.max_pending_per_address,
            pending_by_address: AddressCounts::default(),
            slots: Arc::new(Semaphore::new(l.max_connections)),
            client_slots: Arc::new(Semaphore::new(
                l.max_connections.saturating_sub(l.publisher_reserve),
            )),
            per_address: l.max_per_address,
            by_address: AddressCounts::default(),
        })
    }

    /// A place for one socket in its handshake. `per_address` is false for a trusted proxy's
    /// socket (it carries many clients): only the total applies to it.
    pub fn pending(self: &Arc<Self>, peer: IpAddr, per_address: bool) -> Result<Pending, Closed> {
        let permit = self
            .pending
            .clone()
            .try_acquire_owned()
            .map_err(|_| Closed::Pending)?;
        let key = if per_address {
            let key = self
                .pending_by_address
                .acquire(peer, self.pending_per_address)
                .ok_or(Closed::PendingPerAddress)?;
            Some(key)
        } else {
            None
        };
        Ok(Pending {
            gate: self.clone(),
            key,
            _permit: permit,
        })
    }

    /// A connection slot for a client (`publisher` false) or a publisher from `ip`.
    /// Publishers are not counted per address: a back end may hold many sockets.
    pub fn connection(self: &Arc<Self>, ip: IpAddr, publisher: bool) -> Result<Slot, Closed> {
        let client = if publisher {
            None
        } else {
            Some(
                self.client_slots
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Closed::Slots)?,
            )
        };
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Closed::Slots)?;
        let key = if publisher {
            None
        } else {
            Some(
                self.by_address
                    .acquire(ip, self.per_address)
                    .ok_or(Closed::PerAddress)?,
            )
        };
        Ok(Slot {
            gate: self.clone(),
            key,
            _permits: (slot, client),
        })
    }

    /// Sockets in their handshake now.
    pub fn pending_now(&self, max: usize) -> usize {
        max.saturating_sub(self.pending.available_permits())
    }

    /// Client connections counted for `ip`'s address key.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.by_address.get(ip)
    }
}

/// One socket's place among the pending handshakes, given back on drop.
pub struct Pending {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.gate.pending_by_address.release(key);
        }
    }
}

/// One connection's slot (and per-address count), given back on drop.
pub struct Slot {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.gate.by_address.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn gate(max_connections: usize, reserve: usize, per_address: usize) -> Arc<Gate> {
        Gate::new(&GateLimits {
            max_pending: 3,
            max_pending_per_address: 2,
            max_connections,
            publisher_reserve: reserve,
            max_per_address: per_address,
        })
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(address_key(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn pending_places_are_bounded_in_total_and_per_address_and_given_back() {
        let g = gate(10, 1, 0);
        let a = g.pending(ip("2001:db8::1"), true).expect("first");
        let _b = g
            .pending(ip("2001:db8::2"), true)
            .expect("same /64, second");
        assert_eq!(
            g.pending(ip("2001:db8::3"), true).err(),
            Some(Closed::PendingPerAddress)
        );
        let _c = g
            .pending(ip("10.0.0.1"), false)
            .expect("a proxy: total only");
        assert_eq!(g.pending(ip("10.0.0.2"), true).err(), Some(Closed::Pending));
        drop(a);
        assert!(g.pending(ip("2001:db8::3"), true).is_ok());
        assert_eq!(g.pending_now(3), 2);
    }

    #[test]
    fn clients_leave_the_publisher_reserve_free() {
        let g = gate(3, 1, 0);
        let c1 = g.connection(ip("10.0.0.1"), false).expect("client 1");
        let _c2 = g.connection(ip("10.0.0.2"), false).expect("client 2");
        assert_eq!(
            g.connection(ip("10.0.0.3"), false).err(),
            Some(Closed::Slots)
        );
        let _p = g
            .connection(ip("10.0.0.3"), true)
            .expect("the reserved slot");
        assert_eq!(
            g.connection(ip("10.0.0.4"), true).err(),
            Some(Closed::Slots)
        );
        drop(c1);
        assert!(g.connection(ip("10.0.0.4"), true).is_ok());
    }

    #[test]
    fn connections_per_address_are_bounded_and_given_back() {
        let g = gate(10, 1, 2);
        let a = g.connection(ip("2001:db8::1"), false).expect("1");
        let _b = g.connection(ip("2001:db8::2"), false).expect("2");
        assert_eq!(
            g.connection(ip("2001:db8::3"), false).err(),
            Some(Closed::PerAddress)
        );
        assert!(g.connection(ip("2001:db8::3"), true).is_ok(), "publishers");
        assert_eq!(g.connections_from(ip("2001:db8::9")), 2);
        drop(a);
        assert!(g.connection(ip("2001:db8::3"), false).is_ok());
    }
}

//! Who is to receive an event: the address the router resolves and the cluster carries.

/// Who is to receive an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every connection, but one.
    All { except: Option<u64> },
    /// One user's connections (and the publishers, unless `deliverUserEvents` is `all`).
    User { user: &'a str, except: Option<u64> },
    /// One connection by wire id.
    Connection(&'a str),
}

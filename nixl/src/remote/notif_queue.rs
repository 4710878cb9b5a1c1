//! The notification queue: what peers (and the agent itself) sent, waiting for `getNotifs`,
//! bounded in bytes. Plain data, no locks or I/O.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::config::NOTIF_OVERHEAD;
use crate::error::Error;

/// The backend's notification queue, shared with the backend thread.
pub type Notifs = Arc<Mutex<NotifQueue>>;

/// Notifications waiting for `getNotifs`: (sender, message) in arrival order, bounded in bytes
/// so that peers cannot grow it without limit while the application does not take them: a
/// peer's notification that does not fit waits on its conn (which takes nothing more from that
/// peer meanwhile) until the application makes room. The sender is a shared name, so queueing
/// a notification allocates only its message.
#[derive(Debug)]
pub struct NotifQueue {
    q: VecDeque<(Arc<str>, Vec<u8>)>,
    held: u64,
    limit: u64,
}

impl NotifQueue {
    /// What one entry counts against the bound besides its message.
    pub const ENTRY_OVERHEAD: u64 = NOTIF_OVERHEAD;

    /// An empty queue holding at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        NotifQueue {
            q: VecDeque::new(),
            held: 0,
            limit,
        }
    }

    fn cost(len: usize) -> u64 {
        len as u64 + Self::ENTRY_OVERHEAD
    }

    /// Whether a `len`-byte notification fits now.
    fn has_room(&self, len: usize) -> Result<(), Error> {
        if self.held + Self::cost(len) > self.limit {
            return Err(Error::NotifQueueFull {
                held: self.held,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Queues a notification, or leaves the queue unchanged when it has no room.
    pub fn push(&mut self, from: Arc<str>, msg: Vec<u8>) -> Result<(), Error> {
        self.reserve(msg.len())?;
        self.push_reserved(from, msg);
        Ok(())
    }

    /// Queues one of the agent's own notifications whatever the bound: the application that
    /// sends it is the one that takes it, so it cannot wait for itself; it only makes peers'
    /// notifications wait longer.
    pub fn push_own(&mut self, from: Arc<str>, msg: Vec<u8>) {
        self.held += Self::cost(msg.len());
        self.push_reserved(from, msg);
    }

    /// Takes room for a `len`-byte notification that will be pushed later (after work done
    /// without the lock), so nothing can fill the queue in between.
    pub fn reserve(&mut self, len: usize) -> Result<(), Error> {
        self.has_room(len)?;
        self.held += Self::cost(len);
        Ok(())
    }

    /// Gives back room taken by [`NotifQueue::reserve`] for a notification never pushed.
    pub fn unreserve(&mut self, len: usize) {
        self.held -= Self::cost(len);
    }

    /// Queues a notification whose room [`NotifQueue::reserve`] took.
    pub fn push_reserved(&mut self, from: Arc<str>, msg: Vec<u8>) {
        self.q.push_back((from, msg));
    }

    /// The oldest notification.
    pub fn front(&self) -> Option<&(Arc<str>, Vec<u8>)> {
        self.q.front()
    }

    /// Drops the oldest notification (taken by the application).
    pub fn pop_front(&mut self) {
        if let Some((_, m)) = self.q.pop_front() {
            self.held -= Self::cost(m.len());
        }
    }

    /// Bytes counted against the bound now.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Notifications queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notif_queue_is_bounded_in_bytes_and_fifo() {
        let per = 100 + NotifQueue::ENTRY_OVERHEAD;
        let mut q = NotifQueue::new(3 * per);
        let from: Arc<str> = Arc::from("p");
        for i in 0..3u8 {
            q.push(from.clone(), vec![i; 100]).unwrap();
        }
        assert_eq!(q.held(), 3 * per);
        let e = q.push(from.clone(), vec![9; 1]).unwrap_err();
        assert!(
            matches!(e, Error::NotifQueueFull { held, limit } if held == 3 * per && limit == 3 * per)
        );
        assert_eq!(
            (q.len(), q.held()),
            (3, 3 * per),
            "a refused push changes nothing"
        );
        assert_eq!(q.front().unwrap().1, vec![0; 100]);
        q.pop_front();
        assert_eq!(q.held(), 2 * per);
        // The room one taken entry leaves fits another of its size, not a larger one.
        assert!(q.has_room(101).is_err());
        q.push(from.clone(), vec![3; 100]).unwrap();
        // The agent's own notifications go in whatever the bound.
        q.push_own(from.clone(), vec![4; 100]);
        assert_eq!(q.held(), 4 * per);
        let order: Vec<u8> = std::iter::from_fn(|| {
            let b = q.front().map(|(_, m)| m[0]);
            q.pop_front();
            b
        })
        .collect();
        assert_eq!(order, [1, 2, 3, 4]);
        assert!(q.is_empty() && q.held() == 0);
        q.pop_front();
        assert_eq!(q.held(), 0, "popping an empty queue is harmless");
    }
}

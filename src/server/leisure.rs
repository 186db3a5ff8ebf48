//! Answers to multicast requests, held back for a random delay within the
//! Leisure period (RFC 7252 §8.2) so that the servers of a group do not
//! all answer at once. A fixed number of slots, each with room for one
//! reply, allocated when multicast is turned on: queueing allocates
//! nothing, and a full queue drops the new answer (the client asked a
//! group and retries; a flood of group requests cannot grow memory).

use crate::service::MAX_REPLY_LEN;
use crate::sockio::LocalDest;
use std::net::SocketAddr;

/// One held-back reply.
#[derive(Debug)]
struct Slot {
    /// When to send it; `None`: the slot is free.
    due_ms: Option<u64>,
    /// Index of the socket the request came in on.
    socket: usize,
    to: SocketAddr,
    /// The group the request was sent to and its interface: the reply
    /// leaves from a unicast address of that interface.
    dest: Option<LocalDest>,
    len: usize,
    bytes: Box<[u8]>,
}

/// A held-back reply that is due.
#[derive(Debug)]
pub(super) struct Due<'q> {
    /// Index of the socket to send from.
    pub(super) socket: usize,
    /// The requester.
    pub(super) to: SocketAddr,
    /// Where the request arrived.
    pub(super) dest: Option<LocalDest>,
    /// The reply.
    pub(super) bytes: &'q [u8],
}

/// The queue of held-back replies; see the module docs.
#[derive(Debug)]
pub(super) struct Leisure {
    period_ms: u64,
    /// xorshift64 state: the delays need to be spread, not secret.
    rng: u64,
    slots: Vec<Slot>,
}

impl Leisure {
    /// No multicast: nothing is ever queued, nothing allocated.
    pub(super) fn off() -> Leisure {
        Leisure {
            period_ms: 0,
            rng: 1,
            slots: Vec::new(),
        }
    }

    /// A queue of `capacity` replies, each delayed uniformly within
    /// `period_ms`, the delays drawn from `seed`.
    pub(super) fn new(period_ms: u64, capacity: usize, seed: u64) -> Leisure {
        Leisure {
            period_ms,
            rng: seed | 1,
            slots: (0..capacity)
                .map(|_| Slot {
                    due_ms: None,
                    socket: 0,
                    to: SocketAddr::from(([0, 0, 0, 0], 0)),
                    dest: None,
                    len: 0,
                    bytes: vec![0; MAX_REPLY_LEN].into_boxed_slice(),
                })
                .collect(),
        }
    }

    /// True when multicast answers can be queued at all.
    pub(super) fn is_on(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Holds `reply` back for a random delay; false when the queue is full
    /// (or off) and the reply is dropped.
    pub(super) fn schedule(
        &mut self,
        now_ms: u64,
        socket: usize,
        to: SocketAddr,
        dest: Option<LocalDest>,
        reply: &[u8],
    ) -> bool {
        let delay = self.next_random() % self.period_ms.saturating_add(1);
        let Some(slot) = self.slots.iter_mut().find(|s| s.due_ms.is_none()) else {
            return false;
        };
        let Some(room) = slot.bytes.get_mut(..reply.len()) else {
            return false;
        };
        room.copy_from_slice(reply);
        slot.len = reply.len();
        slot.socket = socket;
        slot.to = to;
        slot.dest = dest;
        slot.due_ms = Some(now_ms.saturating_add(delay));
        true
    }

    /// When the next held-back reply is due.
    pub(super) fn next_due_ms(&self) -> Option<u64> {
        self.slots.iter().filter_map(|s| s.due_ms).min()
    }

    /// The first reply due at `now_ms`, taken out of the queue.
    pub(super) fn take_due(&mut self, now_ms: u64) -> Option<Due<'_>> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.due_ms.is_some_and(|due| due <= now_ms))?;
        slot.due_ms = None;
        Some(Due {
            socket: slot.socket,
            to: slot.to,
            dest: slot.dest,
            bytes: slot.bytes.get(..slot.len).unwrap_or(&[]),
        })
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn replies_wait_within_the_period_and_come_out_once() {
        let mut q = Leisure::new(1000, 4, 42);
        for i in 0..4u8 {
            assert!(q.schedule(10_000, 0, to(), None, &[i; 3]));
        }
        assert!(!q.schedule(10_000, 0, to(), None, b"full"), "bounded");
        let first = q.next_due_ms().unwrap();
        assert!((10_000..=11_000).contains(&first));
        assert!(q.take_due(9_999).is_none());
        let mut seen = Vec::new();
        while let Some(due) = q.take_due(11_000) {
            seen.push(due.bytes.to_vec());
        }
        seen.sort();
        assert_eq!(seen, (0..4u8).map(|i| vec![i; 3]).collect::<Vec<_>>());
        assert_eq!(q.next_due_ms(), None);
    }

    #[test]
    fn delays_are_spread_over_the_period() {
        let mut q = Leisure::new(5000, 64, 7);
        let mut dues = Vec::new();
        for _ in 0..64 {
            q.schedule(0, 0, to(), None, b"x");
        }
        while let Some(due) = q.next_due_ms() {
            dues.push(due);
            q.take_due(due);
        }
        assert_eq!(dues.len(), 64);
        assert!(dues.iter().all(|&d| d <= 5000));
        assert!(dues.iter().any(|&d| d < 2500) && dues.iter().any(|&d| d > 2500));
    }

    #[test]
    fn off_queues_nothing() {
        let mut q = Leisure::off();
        assert!(!q.is_on());
        assert!(!q.schedule(0, 0, to(), None, b"x"));
    }
}

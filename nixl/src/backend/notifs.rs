//! Notifications: `getNotifs`, `genNotif`, and the length a notification may have.

use tcpx_core::wire::MAX_NOTIF;

use crate::error::{Arg, Error};

use super::{lock, Backend};

impl Backend {
    /// A notification for `agent` no longer than it takes: ours for ourselves
    /// (`max_notif_bytes`); for a peer what the wire carries, and on its conn what the peer
    /// told us it takes.
    pub(super) fn check_notif(&self, agent: &str, msg: &[u8]) -> Result<(), Error> {
        let (max, whose) = if agent == &*self.agent {
            (
                self.config.max_notif_bytes as usize,
                "this agent's max_notif_bytes",
            )
        } else {
            (MAX_NOTIF, "the most the wire carries")
        };
        if msg.len() > max {
            return Err(Error::invalid(
                Arg::Notif,
                format!("{} bytes, at most {max} ({whose})", msg.len()),
            ));
        }
        Ok(())
    }

    /// `getNotifs`: hands each queued `(sender, message)` to `sink` in arrival order; one the
    /// sink refuses stays queued.
    pub fn take_notifs(&self, mut sink: impl FnMut(&str, &[u8]) -> bool) -> Result<(), Error> {
        let mut q = lock(&self.notifs);
        while let Some((from, msg)) = q.front() {
            if !sink(from, msg) {
                return Err(Error::Output("a notification"));
            }
            q.pop_front();
        }
        Ok(())
    }

    /// `genNotif`: a notification not tied to a transfer.
    pub fn gen_notif(&self, agent: &str, msg: &[u8]) -> Result<(), Error> {
        self.check_notif(agent, msg)?;
        if agent == &*self.agent {
            lock(&self.notifs).push_own(self.agent.clone(), msg.to_vec());
            return Ok(());
        }
        let peer = self.peer_info(agent)?;
        self.remote.notify(agent, &peer, msg)
    }

    /// Bytes the notification queue counts against `notif_queue_bytes` now (queued and
    /// reserved; for tests).
    pub fn notif_bytes_held(&self) -> u64 {
        lock(&self.notifs).held()
    }
}

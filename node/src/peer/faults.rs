//! Fault injection for tests: peer links this node will not use.
//!
//! The production path pays one relaxed atomic load per call: the set of cut links is
//! consulted (under its lock) only while at least one link is cut.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Links cut for fault injection: peer addresses this node will not talk to.
#[derive(Debug, Default)]
pub struct Faults {
    any: AtomicBool,
    blocked: RwLock<HashSet<String>>,
}

impl Faults {
    /// Cut the link to `peer_addr` (outgoing calls fail as if it were unreachable).
    pub fn block(&self, peer_addr: impl ToString) {
        let mut blocked = self.blocked.write().expect("faults lock poisoned");
        blocked.insert(peer_addr.to_string());
        self.any.store(true, Ordering::Release);
    }

    pub fn unblock(&self, peer_addr: &str) {
        let mut blocked = self.blocked.write().expect("faults lock poisoned");
        blocked.remove(peer_addr);
        self.any.store(!blocked.is_empty(), Ordering::Release);
    }

    pub fn clear(&self) {
        let mut blocked = self.blocked.write().expect("faults lock poisoned");
        blocked.clear();
        self.any.store(false, Ordering::Release);
    }

    pub fn is_blocked(&self, peer_addr: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.blocked
            .read()
            .expect("faults lock poisoned")
            .contains(peer_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_unblock_clear() {
        let faults = Faults::default();
        assert!(!faults.is_blocked("a:1"));
        faults.block("a:1");
        faults.block("b:2");
        assert!(faults.is_blocked("a:1") && faults.is_blocked("b:2"));
        faults.unblock("a:1");
        assert!(!faults.is_blocked("a:1") && faults.is_blocked("b:2"));
        faults.clear();
        assert!(!faults.is_blocked("b:2"));
    }
}

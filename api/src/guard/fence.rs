//! Fencing: a downstream check that rejects writes carrying an outdated token.

/// Rejects writes that carry an older fencing token than one already seen, per resource.
/// A downstream store embeds one and checks every write's token.
#[derive(Debug, Default)]
pub struct Fence {
    highest: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {token} for {resource:?}: {highest} was already seen")]
pub struct StaleToken {
    pub resource: String,
    pub token: u64,
    pub highest: u64,
}

impl Fence {
    pub fn new() -> Self {
        Fence::default()
    }

    /// Accept `token` for `resource` if it is at least the highest seen, and remember it.
    pub fn check(&self, resource: &str, token: u64) -> Result<(), StaleToken> {
        // The map holds plain integers; a panic while holding it cannot leave it invalid.
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = highest.entry(resource.to_string()).or_insert(0);
        if token < *seen {
            return Err(StaleToken {
                resource: resource.to_string(),
                token,
                highest: *seen,
            });
        }
        *seen = token;
        Ok(())
    }

    pub fn highest(&self, resource: &str) -> Option<u64> {
        let highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        highest.get(resource).copied()
    }
}

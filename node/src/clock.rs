//! The node's wall clock, passed to the actors rather than read from the OS inside them.
//!
//! Deadlines are kept on tokio's monotonic clock (`tokio::time::Instant`), which tests can
//! pause and advance. Log entries are stamped with the leader's wall clock, and lock-delay
//! ends at a wall time; [`Clock::wall_ms`] is that clock. [`Clock::System`] reads the OS;
//! [`Clock::following_tokio`] derives wall time from tokio's clock, so that under
//! `tokio::time::pause()` both clocks move together and an actor's timing can be tested
//! without waiting.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The operating system's wall clock.
    System,
    /// `origin_wall_ms` at `origin`, advancing with tokio's clock (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    FollowingTokio {
        origin_wall_ms: u64,
        origin: Instant,
    },
}

impl Clock {
    /// A wall clock that starts at the OS's time now and then follows tokio's clock.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn following_tokio() -> Clock {
        Clock::FollowingTokio {
            origin_wall_ms: system_ms(),
            origin: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::FollowingTokio {
                origin_wall_ms,
                origin,
            } => origin_wall_ms + origin.elapsed().as_millis() as u64,
        }
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_following_clock_moves_with_paused_time() {
        let clock = Clock::following_tokio();
        let start = clock.wall_ms();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.wall_ms() - start, 90_000);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(Clock::System.wall_ms() > 1_577_836_800_000);
    }
}

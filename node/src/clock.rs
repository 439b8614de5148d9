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
    /// Tests: like `FollowingTokio`, plus a step the test sets at any time (a wall clock
    /// that jumps, as a clock stepped by an operator or a confused NTP does).
    #[cfg(test)]
    Stepped {
        origin_wall_ms: u64,
        origin: Instant,
        step_ms: &'static std::sync::atomic::AtomicI64,
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

    /// A tokio-following wall clock that the test steps by setting the returned value.
    #[cfg(test)]
    pub fn stepped() -> (Clock, &'static std::sync::atomic::AtomicI64) {
        let step_ms = Box::leak(Box::new(std::sync::atomic::AtomicI64::new(0)));
        let clock = Clock::Stepped {
            origin_wall_ms: system_ms(),
            origin: Instant::now(),
            step_ms,
        };
        (clock, step_ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::FollowingTokio {
                origin_wall_ms,
                origin,
            } => origin_wall_ms + origin.elapsed().as_millis() as u64,
            #[cfg(test)]
            Clock::Stepped {
                origin_wall_ms,
                origin,
                step_ms,
            } => (origin_wall_ms + origin.elapsed().as_millis() as u64)
                .saturating_add_signed(step_ms.load(std::sync::atomic::Ordering::SeqCst)),
        }
    }
}

/// How far the cluster's clock may run from a node's monotonic clock while it closes the
/// gap to the leader's wall clock: 1 % (10,000 parts per million) either way.
pub const SLEW_PPM: u64 = 10_000;

/// The clock the leader stamps log entries with and ends lock-delays by: the replicated
/// state's time ([`LeaseState::now_ms`](leasehold_raft::state::LeaseState::now_ms)).
///
/// It is not the wall clock. It advances with the monotonic clock of the node that reads
/// it, within [`SLEW_PPM`], and moves toward that node's wall clock no faster than that: a
/// wall clock stepped back ten minutes makes it run 1 % slow until the two meet, one
/// stepped forward makes it run 1 % fast, and neither is a jump. Every node follows the
/// stamps it applies ([`ClusterClock::observe`]), so a new leader continues from the last
/// stamp it saw, by the time it has itself seen pass since, and a node whose wall clock is
/// off cannot drag the cluster with it. So a duration measured in this time (lock-delay,
/// the request-id dedupe window) lasts at least 1/1.01 of its length on the monotonic
/// clocks of the leaders it spans, whatever their wall clocks do. A restarted node has
/// seen only its own uptime pass: after a whole-cluster restart the time resumes at the
/// last stamp and catches up with the wall clock at 1 %. A node with a data directory
/// keeps its reading there ([`persist`]), so a restart loses only its downtime, not the
/// time the cluster sat idle before it.
#[derive(Debug)]
pub struct ClusterClock {
    wall: Clock,
    anchor: std::sync::Mutex<Option<Anchor>>,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// The last reading or stamp seen, in microseconds since the Unix epoch.
    us: u64,
    at: Instant,
}

impl ClusterClock {
    pub fn new(wall: Clock) -> Self {
        ClusterClock {
            wall,
            anchor: std::sync::Mutex::new(None),
        }
    }

    fn anchor(&self) -> std::sync::MutexGuard<'_, Option<Anchor>> {
        self.anchor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stamp was applied (the replicated state's time is now `stamp_ms`): follow it if it
    /// is ahead of this clock. 0 is a state that nothing has stamped yet.
    pub fn observe(&self, stamp_ms: u64) {
        if stamp_ms == 0 {
            return;
        }
        let now = Instant::now();
        let us = stamp_ms.saturating_mul(1000);
        let mut anchor = self.anchor();
        if anchor.is_none_or(|a| us > a.us) {
            *anchor = Some(Anchor { us, at: now });
        }
    }

    /// What this node would stamp now, without moving the clock (`None` before it saw a
    /// stamp or read one): a time known to have passed, so a later run may resume from it.
    pub fn peek_ms(&self) -> Option<u64> {
        let a = (*self.anchor())?;
        let elapsed = Instant::now().saturating_duration_since(a.at).as_micros() as u64;
        let slew = elapsed.saturating_mul(SLEW_PPM) / 1_000_000;
        let wall = self.wall.wall_ms().saturating_mul(1000);
        Some(wall.clamp(a.us + elapsed - slew, a.us + elapsed + slew) / 1000)
    }

    /// The cluster's time now, in milliseconds since the Unix epoch; `floor_ms` is the
    /// replicated state's time (the last stamp applied). Readings never decrease.
    pub fn now_ms(&self, floor_ms: u64) -> u64 {
        let now = Instant::now();
        let floor = floor_ms.saturating_mul(1000);
        let wall = self.wall.wall_ms().saturating_mul(1000);
        let mut anchor = self.anchor();
        let reading = match *anchor {
            Some(a) => {
                let elapsed = now.saturating_duration_since(a.at).as_micros() as u64;
                let slew = elapsed.saturating_mul(SLEW_PPM) / 1_000_000;
                wall.clamp(a.us + elapsed - slew, a.us + elapsed + slew)
            }
            // A new cluster (nothing stamped yet) starts at the wall clock.
            None if floor == 0 => wall,
            None => floor,
        }
        .max(floor);
        *anchor = Some(Anchor {
            us: reading,
            at: now,
        });
        reading / 1000
    }
}

/// The file in a data directory that keeps the node's reading of the cluster's clock.
const PERSISTED: &str = "cluster-clock";

/// The reading an earlier run of this node kept in `dir`, if any.
pub fn persisted(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(PERSISTED)).ok()?;
    text.trim().parse().ok()
}

/// Keep `clock`'s reading in `dir` once a second (written to a temporary file and renamed
/// over the last, not synced: after a power loss the node falls back to the last stamp in
/// its log, which is only older). A failed write is left for the next second; the disk's
/// health is the log's to report.
pub fn persist(
    clock: std::sync::Arc<ClusterClock>,
    dir: std::path::PathBuf,
    tracker: &tokio_util::task::TaskTracker,
    cancel: &tokio_util::sync::CancellationToken,
) {
    let cancel = cancel.clone();
    tracker.spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let Some(reading) = clock.peek_ms() else {
                continue;
            };
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let tmp = dir.join(format!("{PERSISTED}.tmp"));
                std::fs::write(&tmp, format!("{reading}\n"))?;
                std::fs::rename(&tmp, dir.join(PERSISTED))
            })
            .await;
        }
    });
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

    const MIN: u64 = 60_000;

    /// A wall clock stepped back ten minutes on the leader: the cluster's time keeps going,
    /// at no less than 99 % of the monotonic rate, and never goes back.
    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_stepped_back_slows_the_cluster_time_by_at_most_one_percent() {
        let (wall, step) = Clock::stepped();
        let clock = ClusterClock::new(wall);
        let start = clock.now_ms(0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            clock.now_ms(start),
            start + 1_000,
            "follows the wall clock when it can"
        );
        step.store(-10 * MIN as i64, std::sync::atomic::Ordering::SeqCst);
        let mut last = clock.now_ms(start);
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let now = clock.now_ms(start);
            assert!(now >= last + 99 && now <= last + 101, "{last} -> {now}");
            last = now;
        }
        // Ten seconds after the step: 9.9 s passed in the cluster's time, not -10 min.
        assert!(last - start >= 1_000 + 9_900 - 1, "{}", last - start);
    }

    /// A wall clock stepped forward eleven minutes: no jump, at most 101 % of the rate.
    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_stepped_forward_speeds_the_cluster_time_by_at_most_one_percent() {
        let (wall, step) = Clock::stepped();
        let clock = ClusterClock::new(wall);
        let start = clock.now_ms(0);
        step.store(11 * MIN as i64, std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = clock.now_ms(start);
        assert!(now - start <= 10_100 + 1, "{}", now - start);
        assert!(now - start >= 10_000, "{}", now - start);
    }

    /// A node whose wall clock is ten minutes ahead becomes leader: it continues from the
    /// last stamp it applied, not from its own wall clock; and never below the floor.
    #[tokio::test(start_paused = true)]
    async fn a_new_leader_continues_the_stamps_it_applied() {
        let (wall, step) = Clock::stepped();
        step.store(10 * MIN as i64, std::sync::atomic::Ordering::SeqCst);
        let clock = ClusterClock::new(wall);
        let stamp = system_ms();
        clock.observe(stamp);
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = clock.now_ms(stamp);
        assert!(
            (stamp + 2_000..=stamp + 2_020 + 1).contains(&now),
            "{}",
            now as i64 - stamp as i64
        );
        // A floor ahead of the clock (another leader's stamps) is never undercut.
        assert_eq!(clock.now_ms(now + 5_000), now + 5_000);
        // A new cluster, nothing stamped yet (entries without stamps applied): the wall
        // clock.
        let fresh = ClusterClock::new(Clock::System);
        fresh.observe(0);
        assert!(fresh.now_ms(0) > 1_577_836_800_000);
    }

    /// A node keeps its reading in its data directory; a restart resumes from it, so the
    /// time the cluster sat idle before the restart is not lost.
    #[tokio::test(start_paused = true)]
    async fn a_restart_resumes_from_the_reading_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (tracker, cancel) = (
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let clock = std::sync::Arc::new(ClusterClock::new(Clock::following_tokio()));
        assert_eq!(clock.peek_ms(), None, "nothing seen yet");
        let stamp = system_ms();
        clock.observe(stamp);
        persist(clock.clone(), dir.path().to_path_buf(), &tracker, &cancel);
        // An idle minute: no stamp applied, the clock runs on.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let kept = loop {
            match persisted(dir.path()) {
                Some(kept) if kept >= stamp + 59_000 => break kept,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        // The next run resumes there, not at the last stamp.
        let restarted = ClusterClock::new(Clock::following_tokio());
        restarted.observe(kept);
        restarted.observe(stamp);
        assert!(restarted.now_ms(stamp) >= kept);
    }
}

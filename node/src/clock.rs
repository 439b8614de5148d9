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
/// It is not the wall clock. A leader's readings advance with its monotonic clock, within
/// [`SLEW_PPM`], and move toward its wall clock no faster than that: a wall clock stepped
/// back ten minutes makes them run 1 % slow until the two meet, one stepped forward 1 %
/// fast, and neither is a jump. A node that does not lead follows every stamp it applies
/// ([`ClusterClock::observe`]) and, between stamps, counts time at the slow bound (99 % of
/// its monotonic clock): so when it becomes leader it starts from the last stamp it saw
/// plus no more time than has surely passed since that stamp was made, and a node whose
/// wall clock is off cannot drag the cluster with it. So a duration measured in this time
/// (lock-delay, the request-id dedupe window) lasts at least 1/1.01 of its length on the
/// monotonic clocks of the leaders it spans, whatever their wall clocks do.
///
/// A node with a data directory keeps the last stamp it saw and its slow-bound reading
/// there ([`persist`]); a restart resumes from them, so it loses only its downtime. After
/// every node was down, the time resumes where it stopped and catches up with the wall
/// clock at 1 %.
#[derive(Debug)]
pub struct ClusterClock {
    wall: Clock,
    inner: std::sync::Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The last stamp applied on this node (ms since the Unix epoch; 0: none yet).
    stamp_ms: u64,
    anchor: Option<Anchor>,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// Nanoseconds since the Unix epoch at `at`.
    ns: u64,
    at: Instant,
    /// A reading this node stamped as leader (±1 % from here); otherwise a stamp it
    /// applied (only the slow bound from here).
    own: bool,
}

const MS: u64 = 1_000_000;

impl Anchor {
    /// `(slow, fast)`: the least and most time the anchor may have advanced to by `now`.
    fn bounds(&self, now: Instant) -> (u64, u64) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as u64;
        let slew = elapsed / 1_000_000 * SLEW_PPM + elapsed % 1_000_000 * SLEW_PPM / 1_000_000;
        let ahead = self.ns.saturating_add(elapsed);
        (ahead.saturating_sub(slew), ahead.saturating_add(slew))
    }
}

impl ClusterClock {
    pub fn new(wall: Clock) -> Self {
        ClusterClock {
            wall,
            inner: std::sync::Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stamp was applied (the replicated state's time is now `stamp_ms`). A node that
    /// does not lead follows every new stamp; the leader follows only one ahead of its own
    /// readings (its own stamps are behind them). 0 is a state nothing has stamped yet.
    pub fn observe(&self, stamp_ms: u64, leading: bool) {
        let mut inner = self.inner();
        if stamp_ms == 0 || stamp_ms <= inner.stamp_ms {
            return;
        }
        inner.stamp_ms = stamp_ms;
        let ns = stamp_ms.saturating_mul(MS);
        let keep = leading && inner.anchor.is_some_and(|a| a.own && a.ns >= ns);
        if !keep {
            inner.anchor = Some(Anchor {
                ns,
                at: Instant::now(),
                own: false,
            });
        }
    }

    /// The last stamp this node applied and the slow bound of the time since (what a
    /// later run may resume from: time that has surely passed), if it saw one.
    pub fn resumable(&self) -> Option<(u64, u64)> {
        let inner = self.inner();
        let (slow, _) = inner.anchor?.bounds(Instant::now());
        Some((inner.stamp_ms, slow / MS))
    }

    /// Resume from what an earlier run of this node kept ([`ClusterClock::resumable`]):
    /// stamps up to `stamp_ms` are already counted in `reading_ms`.
    pub fn resume(&self, stamp_ms: u64, reading_ms: u64) {
        let mut inner = self.inner();
        if reading_ms < stamp_ms || stamp_ms <= inner.stamp_ms {
            return;
        }
        inner.stamp_ms = stamp_ms;
        inner.anchor = Some(Anchor {
            ns: reading_ms.saturating_mul(MS),
            at: Instant::now(),
            own: false,
        });
    }

    /// The cluster's time now for the leader's stamp, in milliseconds since the Unix
    /// epoch; `floor_ms` is the replicated state's time (the last stamp applied). Readings
    /// never decrease.
    pub fn now_ms(&self, floor_ms: u64) -> u64 {
        let mut inner = self.inner();
        // Read the clocks under the lock, so that `at` only ever moves forward.
        let now = Instant::now();
        let wall = self.wall.wall_ms().saturating_mul(MS);
        let floor = floor_ms.saturating_mul(MS);
        let reading = match inner.anchor {
            Some(a) if a.own => {
                let (slow, fast) = a.bounds(now);
                wall.clamp(slow, fast)
            }
            // The first reading after following others: no more than has surely passed.
            Some(a) => a.bounds(now).0,
            // A new cluster (nothing stamped yet) starts at the wall clock.
            None if floor == 0 => wall,
            None => floor,
        }
        .max(floor);
        let reading = inner.anchor.map_or(reading, |a| reading.max(a.ns));
        inner.anchor = Some(Anchor {
            ns: reading,
            at: now,
            own: true,
        });
        reading / MS
    }
}

/// The file in a data directory that keeps the node's clock: the last stamp it applied
/// and its reading then, `STAMP READING` in milliseconds.
const PERSISTED: &str = "cluster-clock";

/// What an earlier run of this node kept in `dir`, if it is there and makes sense.
pub fn persisted(dir: &std::path::Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join(PERSISTED)).ok()?;
    let (stamp, reading) = text.trim().split_once(' ')?;
    let (stamp, reading): (u64, u64) = (stamp.parse().ok()?, reading.parse().ok()?);
    // Not before the stamp, and not past the year 9999: anything else is not ours.
    (stamp <= reading && reading < 253_402_300_800_000).then_some((stamp, reading))
}

/// Keep `clock`'s [`ClusterClock::resumable`] in `dir` once a second (written to a
/// temporary file and renamed over the last, not synced: after a power loss the node falls
/// back to the last stamp in its log, which is only older). A failed write is left for
/// the next second; the disk's health is the log's to report.
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
            let Some((stamp, reading)) = clock.resumable() else {
                continue;
            };
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let tmp = dir.join(format!("{PERSISTED}.tmp"));
                std::fs::write(&tmp, format!("{stamp} {reading}\n"))?;
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
    /// last stamp it applied by no more than has surely passed (the slow bound), not from
    /// its own wall clock; and never below the floor.
    #[tokio::test(start_paused = true)]
    async fn a_new_leader_continues_the_stamps_it_applied() {
        let (wall, step) = Clock::stepped();
        step.store(10 * MIN as i64, std::sync::atomic::Ordering::SeqCst);
        let clock = ClusterClock::new(wall);
        let stamp = system_ms();
        clock.observe(stamp, false);
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = clock.now_ms(stamp);
        assert_eq!(now, stamp + 1_980, "{}", now as i64 - stamp as i64);
        // A floor ahead of the clock (another leader's stamps) is never undercut.
        assert_eq!(clock.now_ms(now + 5_000), now + 5_000);
        // A new cluster, nothing stamped yet (entries without stamps applied): the wall
        // clock.
        let fresh = ClusterClock::new(Clock::System);
        fresh.observe(0, false);
        assert!(fresh.now_ms(0) > 1_577_836_800_000);
    }

    /// A node that does not lead follows every stamp, even one behind where its own
    /// readings (as an earlier leader) or its projection got to; the leader ignores its
    /// own stamps, which are behind its readings, so its clock does not lag by the commit
    /// latency of each entry.
    #[tokio::test(start_paused = true)]
    async fn followers_follow_every_stamp_and_the_leader_keeps_its_own_pace() {
        let clock = ClusterClock::new(Clock::following_tokio());
        let start = clock.now_ms(0);
        tokio::time::advance(Duration::from_millis(500)).await;
        let later = clock.now_ms(start);
        assert_eq!(later, start + 500);
        // Its own earlier stamp applied while it leads: no effect.
        clock.observe(start + 100, true);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(clock.now_ms(start), later + 100);
        // Deposed: a new leader's stamp, behind this node's last reading, is followed.
        clock.observe(start + 300, false);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert_eq!(clock.now_ms(start), start + 300 + 990);
        // A stale stamp (already seen) changes nothing.
        clock.observe(start + 200, false);
    }

    /// A node keeps its last stamp and reading in its data directory; a restart resumes
    /// from them, so the time the cluster sat idle before the restart is not lost. What is
    /// kept is the slow bound (time that has surely passed).
    #[tokio::test(start_paused = true)]
    async fn a_restart_resumes_from_the_reading_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (tracker, cancel) = (
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let clock = std::sync::Arc::new(ClusterClock::new(Clock::following_tokio()));
        assert_eq!(clock.resumable(), None, "nothing seen yet");
        let stamp = system_ms();
        clock.observe(stamp, false);
        persist(clock.clone(), dir.path().to_path_buf(), &tracker, &cancel);
        // An idle minute: no stamp applied, the clock runs on.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let (kept_stamp, kept) = loop {
            match persisted(dir.path()) {
                Some((s, r)) if r >= stamp + 58_000 => break (s, r),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        assert_eq!(kept_stamp, stamp);
        assert!(
            kept <= stamp + 60_000 * 99 / 100 + 1_000,
            "{}",
            kept - stamp
        );
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        // The next run resumes there, not at the last stamp: replaying the log (stamps up
        // to the kept one) changes nothing, a newer stamp is followed.
        let restarted = ClusterClock::new(Clock::following_tokio());
        restarted.resume(kept_stamp, kept);
        restarted.observe(stamp, false);
        assert!(restarted.now_ms(stamp) >= kept);
        restarted.observe(kept + 10, false);
        assert_eq!(restarted.now_ms(stamp), kept + 10);
        // A file that is not ours is ignored.
        std::fs::write(dir.path().join(PERSISTED), "18446744073709551615 1\n").unwrap();
        assert_eq!(persisted(dir.path()), None);
    }
}

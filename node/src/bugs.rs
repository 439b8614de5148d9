//! Bug switches: deliberate faults that prove the fault suite's checkers catch them
//! (docs/faults.md, "Proving the checker bites").
//!
//! Compiled in only with the `bug-switches` feature, which only cluster-tests enables
//! (its dev-dependency, and the build of the `leasehold` binary it runs); even then a
//! switch is off unless the `LEASEHOLD_BUG` environment variable of the process names it.
//! Without the feature, `leasehold serve` refuses `LEASEHOLD_BUG` like any unknown
//! `LEASEHOLD_*` variable, so a production binary cannot be started with a bug on.

/// The environment variable that names the switch to turn on.
pub const ENV: &str = "LEASEHOLD_BUG";

/// The faults that can be switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// `stale-follower-reads`: a follower answers a linearizable read from its own
    /// state, skipping the read barrier (the leader's read index).
    StaleFollowerReads,
}

impl Bug {
    pub const ALL: &'static [Bug] = &[Bug::StaleFollowerReads];

    pub fn name(self) -> &'static str {
        match self {
            Bug::StaleFollowerReads => "stale-follower-reads",
        }
    }
}

/// The switch `LEASEHOLD_BUG` names (none if unset or empty); an unknown name is an error
/// naming the known ones.
pub fn from_env() -> Result<Option<Bug>, String> {
    let Ok(value) = std::env::var(ENV) else {
        return Ok(None);
    };
    if value.is_empty() {
        return Ok(None);
    }
    Bug::ALL
        .iter()
        .copied()
        .find(|b| b.name() == value)
        .map(Some)
        .ok_or_else(|| {
            let known: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            format!(
                "{ENV}={value:?} names no bug switch (known: {})",
                known.join(", ")
            )
        })
}

/// Whether `bug` is switched on in this process (read once).
#[cfg(feature = "bug-switches")]
pub(crate) fn active(bug: Bug) -> bool {
    static ON: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| from_env().ok().flatten()) == Some(bug)
}

/// Without the feature every switch is off, and the check compiles away.
#[cfg(not(feature = "bug-switches"))]
#[inline(always)]
pub(crate) fn active(_bug: Bug) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in Bug::ALL {
            assert_eq!(Bug::ALL.iter().find(|b| b.name() == bug.name()), Some(bug));
        }
    }
}

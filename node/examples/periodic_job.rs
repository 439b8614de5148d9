//! A periodic job meant to run under `leasehold lock`, so that only one copy runs at a
//! time across all the machines that schedule it.
//!
//! Schedule it everywhere (cron, systemd timers, Kubernetes CronJobs), e.g.:
//!
//! ```sh
//! */5 * * * * leasehold lock jobs/report --ttl 30s -- /usr/local/bin/periodic_job /srv/report.txt
//! ```
//!
//! `leasehold lock` renews the lock while the job runs, passes the job's exit status
//! through, and stops the job (SIGTERM, then SIGKILL) if the lock is ever lost. The job
//! reads its fencing token from `LEASEHOLD_TOKEN` and refuses to overwrite output written
//! under a newer token, so even a paused, outdated job cannot clobber newer results.
//!
//! Try it: `leasehold serve &` then
//! `leasehold lock jobs/report -- cargo run -p leasehold-node --example periodic_job -- /tmp/report.txt`

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let Ok(token) = std::env::var("LEASEHOLD_TOKEN") else {
        eprintln!(
            "run me under `leasehold lock KEY -- periodic_job OUTPUT`: LEASEHOLD_TOKEN is not set"
        );
        std::process::exit(2);
    };
    let token: u64 = token.parse()?;
    let output = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "report.txt".into()),
    );
    // The fence: the first line of the output holds the token it was written under.
    if let Ok(existing) = std::fs::read_to_string(&output) {
        let written_under: u64 = existing
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("token "))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if written_under > token {
            anyhow::bail!("output was written under token {written_under}, newer than ours ({token}); not overwriting");
        }
    }
    let report = format!(
        "token {token}\nreport generated at {:?} by pid {}\n",
        std::time::SystemTime::now(),
        std::process::id()
    );
    std::fs::write(&output, report)?;
    println!("wrote {} under token {token}", output.display());
    Ok(())
}

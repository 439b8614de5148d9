//! The Ruby gem (`clients/ruby`) and the Go module (`clients/go`) run their own suites,
//! the conformance scenarios of `clients/CONFORMANCE.md` among them, against real 3-node
//! clusters they start from the `leasehold` binary this test run built. Ruby and Go come
//! from Debian (`scripts/test-deps.sh` installs them). The two suites run one after the
//! other: both pause and kill nodes and time the client deadline, which a second suite's
//! clusters on the same two cores would only blur.

use std::path::{Path, PathBuf};
use std::process::Command;

use leasehold_cluster_tests::leasehold_bin;

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn clients_dir(language: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients")
        .join(language)
}

fn run_suite(language: &str, program: &str, args: &[&str], env: &[(&str, &str)]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bin = leasehold_bin();
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(clients_dir(language))
        .env("LEASEHOLD_BIN", &bin);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test-deps.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "the {language} client's suite failed (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
}

#[test]
fn the_ruby_gem_passes_its_suite_against_real_clusters() {
    run_suite("ruby", "rake", &["test"], &[]);
}

#[test]
fn the_go_module_passes_its_suite_against_real_clusters() {
    // Standard library only: no module may be downloaded.
    run_suite(
        "go",
        "go",
        &["test", "-count=1", "./..."],
        &[("GOFLAGS", "-mod=mod"), ("GOPROXY", "off")],
    );
}

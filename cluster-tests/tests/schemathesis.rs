//! An independent fuzzer reads the node's OpenAPI document and tries the API with it:
//! schemathesis, every check (server errors, undocumented statuses and headers, response
//! schemas, schema-valid requests refused, schema-violating requests accepted, the
//! `Allow` header of unsupported methods, stateful sequences), 40 examples per operation,
//! against a live three-node cluster. Only the membership operations are left out (they
//! would reconfigure the cluster under test). 0 failures are required.
//!
//! `schemathesis.toml` configures two checks where this API's contract differs from the
//! REST habits they assume, each with its reason: 413 counts as a rejection (an oversized
//! key or value), and "use after free" is off for the read routes of locks, names and
//! semaphores (a DELETE there ends a hold; the key, its history and its queue live on).
//!
//! schemathesis is installed into `target/tools/schemathesis` by `scripts/test-deps.sh`
//! (the test command runs it first); `SCHEMATHESIS` names another binary.

use std::path::PathBuf;
use std::process::Command;

use leasehold_cluster_tests::{ClusterOptions, TestCluster};

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return path.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/schemathesis/bin/schemathesis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_nothing_against_a_three_node_cluster() {
    let bin = schemathesis();
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test-deps.sh (the README's test command does)",
        bin.display()
    );
    let cluster = TestCluster::start(ClusterOptions {
        // Blocking requests wait at most 1 s, so the fuzzer's longest waits stay short; the
        // document states this node's limit, so the fuzzer generates within it.
        tweak: |config| config.limits.max_wait_ms = 1_000,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts");
    let base = cluster.url(0);
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // schemathesis keeps a cache of examples in its working directory: a fresh one per
    // run, so the run depends on the seed alone.
    let workdir = tempfile::tempdir().expect("a working directory");
    let cwd = workdir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&bin)
            .current_dir(cwd)
            .arg("--config-file")
            .arg(manifest.join("schemathesis.toml"))
            .args(["--no-color", "run"])
            .arg(format!("{base}/openapi.json"))
            .args([
                "--checks",
                "all",
                "--max-examples",
                "40",
                "--exclude-path-regex",
                "/v1/cluster/members",
                "--seed",
                // A fixed seed: a failure reproduces with the same command.
                "20261204",
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found failures (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    // It ran the operations (not, say, zero of them against a wrong URL).
    assert!(stdout.contains("passed"), "{stdout}");
    assert!(!stdout.contains("Selected: 0/"), "{stdout}");
}

//! The `leasehold` binary's client commands, run as real processes against an in-process
//! three-node cluster.

use std::process::Stdio;
use std::time::Duration;

use leasehold_api::wire::ReadParams;
use leasehold_api::{Client, ClientBuilder, LeaseService};
use leasehold_cluster_tests::{leasehold_bin, wait_until, TestCluster};
use tokio::process::Command;

const NOT_ACQUIRED: i32 = 75;
const LOST: i32 = 76;

fn endpoints(cluster: &TestCluster) -> String {
    (0..cluster.len())
        .map(|i| cluster.url(i))
        .collect::<Vec<_>>()
        .join(",")
}

fn leasehold(cluster: &TestCluster) -> Command {
    let mut cmd = Command::new(leasehold_bin());
    cmd.env("LEASEHOLD_ENDPOINTS", endpoints(cluster))
        .env("LEASEHOLD_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn status_of(cmd: &mut Command) -> i32 {
    let out = cmd.output().await.expect("run leasehold");
    out.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_passes_the_command_status_through_and_releases() {
    let cluster = TestCluster::start3().await.unwrap();
    let client = Client::new([cluster.url(0)]).unwrap();
    assert_eq!(
        status_of(leasehold(&cluster).args(["lock", "k", "--", "true"])).await,
        0
    );
    assert_eq!(
        status_of(leasehold(&cluster).args(["lock", "k", "--", "false"])).await,
        1
    );
    assert_eq!(
        status_of(leasehold(&cluster).args(["lock", "k", "--", "sh", "-c", "exit 7"])).await,
        7
    );
    // The command sees its fencing token.
    let out = leasehold(&cluster)
        .args(["lock", "k", "--", "sh", "-c", "echo token=$LEASEHOLD_TOKEN"])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("token="),
        "{out:?}"
    );
    assert!(
        !client
            .get_lock("k", ReadParams::default())
            .await
            .unwrap()
            .held,
        "released after the command"
    );

    // Held elsewhere: not acquired within --wait.
    let held = leasehold_api::guard::Lock::new(&client, "busy")
        .acquire()
        .await
        .unwrap();
    let code =
        status_of(leasehold(&cluster).args(["lock", "busy", "--wait", "200ms", "--", "true"]))
            .await;
    assert_eq!(code, NOT_ACQUIRED);
    held.release().await.unwrap();
    // Usage errors say what to do.
    let out = leasehold(&cluster)
        .args(["lock", "k", "--ttl", "3s", "--", ""])
        .output()
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_kills_its_command_when_the_lock_is_revoked() {
    let cluster = TestCluster::start3().await.unwrap();
    let client = Client::new([cluster.url(1)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut child = leasehold(&cluster)
        .args([
            "lock",
            "revokable",
            "--ttl",
            "3s",
            "--grace",
            "1s",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    // The shell creates the pid file before it writes to it, so wait for
    // a whole pid, not merely for the file.
    let (lease_id, pid) = wait_until(Duration::from_secs(10), || async {
        let s = client
            .get_lock("revokable", ReadParams::default())
            .await
            .ok()?;
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        s.holder.map(|h| (h.lease_id, pid))
    })
    .await
    .unwrap();
    client
        .revoke_lease(lease_id, Default::default())
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("lock exits after the loss")
        .unwrap();
    assert_eq!(status.code(), Some(LOST));
    // The command was stopped.
    wait_until(Duration::from_secs(5), || async {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        (!alive).then_some(())
    })
    .await
    .expect("the command was killed");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elect_hands_over_when_the_leaders_process_is_killed() {
    let cluster = TestCluster::start3().await.unwrap();
    let observer = Client::new([cluster.url(0)]).unwrap();
    let mut candidates = Vec::new();
    for i in 0..3 {
        let child = leasehold(&cluster)
            .args([
                "elect",
                "svc",
                "--value",
                &format!("c{i}"),
                "--owner",
                &format!("c{i}"),
                "--ttl",
                "1500ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        candidates.push(child);
    }
    let first = wait_until(Duration::from_secs(10), || async {
        observer
            .get_name("svc", ReadParams::default())
            .await
            .ok()?
            .record
    })
    .await
    .unwrap();
    // Wait until the other two queue behind the leader (each holds a lease).
    wait_until(Duration::from_secs(10), || async {
        let leases = observer.list_leases(Default::default()).await.ok()?;
        (leases.leases.len() == 3).then_some(())
    })
    .await
    .unwrap();
    let index = observer
        .get_name("svc", ReadParams::default())
        .await
        .unwrap()
        .index;
    // Observers on every node watch with a blocking query.
    let mut watchers = Vec::new();
    for i in 0..3 {
        let c = Client::new([cluster.url(i)]).unwrap();
        watchers.push(tokio::spawn(async move {
            c.get_name(
                "svc",
                ReadParams {
                    index: Some(index),
                    wait_ms: Some(20_000),
                    stale: None,
                },
            )
            .await
        }));
    }
    let leader_idx: usize = first.owner.trim_start_matches('c').parse().unwrap();
    let killed_at = tokio::time::Instant::now();
    candidates[leader_idx].start_kill().unwrap(); // SIGKILL: no resignation
    let _ = candidates[leader_idx].wait().await;
    for w in watchers {
        let seen = w.await.unwrap().unwrap();
        let record = seen.record.expect("a new holder");
        assert_ne!(record.owner, first.owner, "a new leader");
        assert!(record.token > first.token);
        let vacancy = seen.vacated.expect("the vacancy is reported");
        assert_eq!(vacancy.owner, first.owner);
        assert_eq!(vacancy.reason, leasehold_api::wire::ReleaseReason::Expired);
    }
    let handover = killed_at.elapsed();
    // TTL (1.5 s) + the failover bound, with slack for a loaded machine.
    assert!(
        handover < Duration::from_millis(1500 + 2500),
        "handover took {handover:?}"
    );
    // Exactly one leader, and it is one of the survivors.
    let now = observer
        .get_name("svc", ReadParams::default())
        .await
        .unwrap()
        .record
        .unwrap();
    assert!(now.owner != first.owner);
    for (i, c) in candidates.iter_mut().enumerate() {
        if i != leader_idx {
            assert!(c.try_wait().unwrap().is_none(), "candidate {i} still runs");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspection_commands_print_text_and_json() {
    let cluster = TestCluster::start3().await.unwrap();
    let client = Client::new([cluster.url(0)]).unwrap();
    let _held = leasehold_api::guard::Lock::new(&client, "inspect/me")
        .owner("tester")
        .acquire()
        .await
        .unwrap();
    let out = leasehold(&cluster)
        .args(["locks", "ls"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("inspect/me  owner=tester"));
    let out = leasehold(&cluster)
        .args(["--json", "locks", "get", "inspect/me"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["owner"], "tester");
    let out = leasehold(&cluster).args(["status"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("leader"));
    let out = leasehold(&cluster)
        .args(["leases", "ls"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("owner=tester"));
    let token = v["token"].as_u64().unwrap();
    // An operator's force release, then the lock is free.
    let out = leasehold(&cluster)
        .args(["locks", "release", "inspect/me", "--force"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("inspect/me: ended the hold of tester (token {token})")
    );
    let out = leasehold(&cluster)
        .args(["locks", "get", "inspect/me"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("inspect/me is free"));
    let out = leasehold(&cluster)
        .args(["names", "get", "nobody"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not registered"));
    // Unreachable endpoints: a clear message and status 69.
    let out = Command::new(leasehold_bin())
        .args(["--endpoints", "http://127.0.0.1:9", "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--endpoints"));
    cluster.shutdown().await;
}

/// A node whose security config cannot be honoured (a tokens file or certificates that
/// are not there; `tls.cert` without `tls.ca`) must not start and serve plain,
/// unauthenticated HTTP instead. Bad config is refused naming the key.
#[tokio::test]
async fn serve_refuses_config_it_cannot_honour() {
    for (args, key) in [
        (
            vec!["--auth-tokens-file", "/etc/leasehold/tokens.toml"],
            "auth.tokens_file",
        ),
        (
            vec!["--tls-cert", "/c.pem", "--tls-key", "/k.pem"],
            "tls.cert",
        ),
        (vec!["--limits-min-ttl-ms", "0"], "limits.min_ttl_ms"),
    ] {
        let out = Command::new(leasehold_bin())
            .arg("serve")
            .args(["--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0"])
            .args(&args)
            .env("LEASEHOLD_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("serve exits instead of serving")
            .expect("run leasehold serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: serve started");
        assert!(
            stderr.contains(key),
            "{args:?}: stderr should name {key}: {stderr}"
        );
    }
}

/// A base port for `local-cluster --base-port`: BASE+1..=3 and BASE+101..=103 free now,
/// below the ephemeral range that the other tests' port-0 listeners use.
fn free_base_port() -> u16 {
    let start = 10_000 + (std::process::id() % 400) as u16 * 50;
    for base in (start..30_000)
        .step_by(250)
        .chain((10_000..start).step_by(250))
    {
        let ports = [1, 2, 3, 101, 102, 103].map(|o| base + o);
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free block of ports for local-cluster");
}

/// A running `leasehold local-cluster`, stopped with SIGTERM (never SIGKILL, which would
/// leave its nodes running) when dropped.
struct LocalCluster {
    child: tokio::process::Child,
    /// What it printed up to "press Ctrl-C".
    out: String,
}

impl LocalCluster {
    async fn start(flags: &[&str]) -> LocalCluster {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let base = free_base_port().to_string();
        let mut child = Command::new(leasehold_bin())
            .args(["local-cluster", "--base-port", &base])
            .args(flags)
            .env("LEASEHOLD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run leasehold local-cluster");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut out = String::new();
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                out.push_str(&line);
                out.push('\n');
                if line.starts_with("press Ctrl-C") {
                    return true;
                }
            }
            false
        })
        .await;
        let cluster = LocalCluster { child, out };
        assert!(
            matches!(read, Ok(true)),
            "local-cluster {flags:?} did not come up; it printed:\n{}",
            cluster.out
        );
        cluster
    }

    /// What follows `prefix` on the line that starts with it.
    fn line(&self, prefix: &str) -> &str {
        self.out
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", self.out))
    }

    /// The token printed for principal `name` (the last word of its line).
    fn token(&self, name: &str) -> String {
        let line = self.line(&format!("  {name} "));
        let token = line.split_whitespace().last().expect("a token");
        assert!(token.starts_with("lh_"), "{line}");
        token.to_string()
    }

    fn endpoints(&self) -> Vec<String> {
        let line = self.line("export LEASEHOLD_ENDPOINTS=");
        line.split(',').map(str::to_string).collect()
    }

    fn tokens_file(&self) -> std::path::PathBuf {
        let line = self.line("tokens (shown only now; ");
        let path = line.split(" keeps only").next().expect("a path");
        std::path::PathBuf::from(path)
    }

    /// SIGTERM, as Ctrl-C would; the exit status.
    async fn stop(mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a child process we spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("local-cluster stops on SIGTERM")
            .expect("wait for local-cluster");
        status.code()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: as in `stop`; SIGTERM lets it stop its nodes.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}

/// What the printed tokens may do: admin everything, demo only under demo/, viewer only
/// read; and a missing token is 401.
async fn check_printed_tokens(cluster: &LocalCluster, builder: impl Fn() -> ClientBuilder) {
    use leasehold_api::guard::Lock;
    use leasehold_api::{ErrorCode, GuardError};
    let (admin, demo, viewer) = (
        cluster.token("admin"),
        cluster.token("demo"),
        cluster.token("viewer"),
    );
    let status = builder()
        .token(&admin)
        .build()
        .unwrap()
        .cluster_status()
        .await;
    assert!(status.is_ok(), "admin reads the cluster: {status:?}");
    let e = builder()
        .build()
        .unwrap()
        .cluster_status()
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
    let demo = builder().token(&demo).build().unwrap();
    Lock::new(&demo, "demo/job")
        .acquire()
        .await
        .expect("demo locks under demo/")
        .release()
        .await
        .unwrap();
    match Lock::new(&demo, "billing/job").acquire().await {
        Err(GuardError::Api(e)) => assert_eq!(e.code, ErrorCode::Forbidden, "{e}"),
        other => panic!("demo locked outside demo/: {:?}", other.map(|_| ())),
    }
    let viewer = builder().token(&viewer).build().unwrap();
    viewer.list_locks(Default::default()).await.unwrap();
    match Lock::new(&viewer, "demo/job").acquire().await {
        Err(GuardError::Api(e)) => assert_eq!(e.code, ErrorCode::Forbidden, "{e}"),
        other => panic!("viewer took a lock: {:?}", other.map(|_| ())),
    }
    // The file has the digests, not the tokens.
    let file = std::fs::read_to_string(cluster.tokens_file()).unwrap();
    assert!(
        !file.contains(&admin) && file.contains("sha256 = "),
        "{file}"
    );
}

/// The printed `export` lines are enough for the CLI.
async fn check_cli_with_exports(cluster: &LocalCluster) {
    let mut cmd = Command::new(leasehold_bin());
    cmd.env_remove("LEASEHOLD_CACERT")
        .env_remove("LEASEHOLD_AUTH_TOKEN");
    for line in cluster.out.lines() {
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            cmd.env(k, v);
        }
    }
    let out = cmd.arg("status").output().await.unwrap();
    assert!(out.status.success(), "status with the exports: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_with_auth_prints_tokens_that_work() {
    let cluster = LocalCluster::start(&["--auth"]).await;
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert!(
        endpoints.iter().all(|e| e.starts_with("http://")),
        "{endpoints:?}"
    );
    let admin = cluster.token("admin");
    assert_eq!(cluster.line("export LEASEHOLD_AUTH_TOKEN="), admin);
    let curl = cluster.line("curl ");
    assert!(
        curl.contains(&format!("-H \"Authorization: Bearer {admin}\"")),
        "{curl}"
    );
    check_printed_tokens(&cluster, || Client::builder(endpoints.clone())).await;
    check_cli_with_exports(&cluster).await;
    let dir = cluster.tokens_file().parent().unwrap().to_path_buf();
    assert_eq!(cluster.stop().await, Some(0));
    assert!(
        !dir.exists(),
        "the temporary directory {} is removed",
        dir.display()
    );
}

/// `local-cluster --tls --auth`: the one command a newcomer runs to try a secured cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_with_tls_and_auth_serves_https_with_the_printed_ca() {
    use leasehold_api::client::is_tls_failure;
    let cluster = LocalCluster::start(&["--tls", "--auth"]).await;
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert!(
        endpoints
            .iter()
            .all(|e| e.starts_with("https://127.0.0.1:")),
        "{endpoints:?}"
    );
    let ca = std::path::PathBuf::from(cluster.line("export LEASEHOLD_CACERT="));
    assert_eq!(cluster.line("CA certificate: "), ca.display().to_string());
    assert!(std::fs::read_to_string(&ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let admin = cluster.token("admin");
    let curl = cluster.line("curl ");
    assert!(
        curl.contains(&format!("--cacert {}", ca.display())),
        "{curl}"
    );
    assert!(
        curl.contains(&format!("Bearer {admin}")) && curl.contains("https://"),
        "{curl}"
    );

    // Every node answers https with the printed CA, and only with it.
    for endpoint in &endpoints {
        let with_ca = Client::builder([endpoint.clone()])
            .ca_cert_file(&ca)
            .token(&admin);
        with_ca.build().unwrap().cluster_status().await.unwrap();
        let e = Client::builder([endpoint.clone()])
            .token(&admin)
            .build()
            .unwrap()
            .cluster_status()
            .await
            .unwrap_err();
        assert!(is_tls_failure(&e) && e.message.contains("--cacert"), "{e}");
    }
    // The cluster works across nodes (peers speak mutual TLS): a write through a follower.
    let status = Client::builder(endpoints.clone())
        .ca_cert_file(&ca)
        .token(&admin)
        .build()
        .unwrap()
        .cluster_status()
        .await
        .unwrap();
    let follower = endpoints
        .iter()
        .enumerate()
        .find(|(i, _)| Some(*i as u64 + 1) != status.leader_id)
        .map(|(_, e)| e.clone())
        .unwrap();
    check_printed_tokens(&cluster, || {
        Client::builder([follower.clone()]).ca_cert_file(&ca)
    })
    .await;
    check_cli_with_exports(&cluster).await;
    let dir = cluster.tokens_file().parent().unwrap().to_path_buf();
    assert!(
        ca.starts_with(&dir),
        "{} is under {}",
        ca.display(),
        dir.display()
    );
    assert_eq!(cluster.stop().await, Some(0));
    assert!(
        !dir.exists(),
        "the temporary directory {} is removed",
        dir.display()
    );
}

/// `leasehold serve` under systemd's `Type=notify` (deploy/systemd): `READY=1` on the
/// `NOTIFY_SOCKET` once the node answers `/readyz` with 200, `STOPPING=1` on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_notifies_systemd_when_ready_and_when_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let client_addr = leasehold_cluster_tests::free_addr().await.unwrap();
    let peer_addr = leasehold_cluster_tests::free_addr().await.unwrap();
    let mut child = Command::new(leasehold_bin())
        .args(["serve", "--client-addr", &client_addr.to_string()])
        .args(["--peer-addr", &peer_addr.to_string()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("LEASEHOLD_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let receive = move || {
        let mut messages = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.recv(&mut buf).expect("a notification within 20 s");
            let message = String::from_utf8_lossy(&buf[..n]).to_string();
            messages.push(message.clone());
            if message.lines().any(|l| l == "READY=1" || l == "STOPPING=1") {
                return (socket, messages);
            }
        }
    };
    let (socket, messages) = tokio::task::spawn_blocking(receive).await.unwrap();
    assert!(messages.last().unwrap().contains("READY=1"), "{messages:?}");
    // READY came after readiness: /readyz says so now.
    let ready = reqwest::get(format!("http://{client_addr}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let receive_stop = move || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("STOPPING within 20 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let stopping = tokio::task::spawn_blocking(receive_stop).await.unwrap();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the node exits after STOPPING")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `log.format = "json"`: every line the node logs is one JSON object with a level, a
/// message and the node's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_json_lines_when_asked() {
    let client_addr = leasehold_cluster_tests::free_addr().await.unwrap();
    let peer_addr = leasehold_cluster_tests::free_addr().await.unwrap();
    let child = Command::new(leasehold_bin())
        .args(["serve", "--client-addr", &client_addr.to_string()])
        .args(["--peer-addr", &peer_addr.to_string()])
        .env("LEASEHOLD_LOG_FORMAT", "json")
        .env("LEASEHOLD_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), || async {
        let r = reqwest::get(format!("http://{client_addr}/readyz"))
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await
    .unwrap();
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every line the node wrote is JSON (the binary's own plain messages go to stderr
    // too, but they do not start with `{`: `leasehold node 1 serving ...`).
    let mut started = None;
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        if v["fields"]["message"] == "leasehold node started" {
            started = Some(v);
        }
    }
    let started =
        started.unwrap_or_else(|| panic!("no `leasehold node started` line in: {stderr}"));
    assert_eq!(started["level"], "INFO", "{started}");
    assert_eq!(started["span"]["name"], "node", "{started}");
    assert!(started["fields"]["client_addr"].is_string(), "{started}");
}

async fn run_json(cmd: &mut Command) -> (i32, serde_json::Value, String) {
    let out = cmd.output().await.expect("run leasehold");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), value, text)
}

/// The CLI covers the API: leases, lock history and wait, expired, semaphores, name
/// registration and resignation, `status` with each member's lag, with `--json` and the
/// documented exit statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_covers_leases_histories_waits_semaphores_and_names() {
    let cluster = TestCluster::start3().await.unwrap();
    let client = Client::new([cluster.url(0)]).unwrap();
    let lh = || leasehold(&cluster);

    // Leases: grant, get, keepalive, revoke.
    let (code, grant, text) = run_json(lh().args([
        "--json", "leases", "grant", "--ttl", "10s", "--owner", "ops",
    ]))
    .await;
    assert_eq!(code, 0, "{text}");
    let id = grant["lease_id"].as_u64().expect("a lease id").to_string();
    let (code, got, text) = run_json(lh().args(["--json", "leases", "get", &id])).await;
    assert_eq!((code, got["owner"].as_str()), (0, Some("ops")), "{text}");
    let (code, kept, text) = run_json(lh().args(["--json", "leases", "keepalive", &id])).await;
    assert_eq!((code, kept["ttl_ms"].as_u64()), (0, Some(10_000)), "{text}");
    let (code, revoked, text) = run_json(lh().args(["--json", "leases", "revoke", &id])).await;
    assert_eq!(
        (code, revoked["revoked"].as_bool()),
        (0, Some(true)),
        "{text}"
    );
    let (code, _, text) = run_json(lh().args(["leases", "get", &id])).await;
    assert_eq!(code, 1, "a revoked lease is gone: {text}");

    // A lock's wait (held: 75 after --wait; released: 0) and history.
    let held = client
        .acquire_lock(
            "cli/k",
            leasehold_api::wire::AcquireRequest {
                owner: "alice".into(),
                ttl_ms: Some(10_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (code, _, text) = run_json(lh().args(["locks", "wait", "cli/k", "--wait", "300ms"])).await;
    assert_eq!(code, NOT_ACQUIRED, "{text}");
    assert!(text.contains("still held by alice"), "{text}");
    let waiting = lh()
        .args(["--json", "locks", "wait", "cli/k", "--wait", "10s"])
        .output();
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client
            .release_lock(
                "cli/k",
                leasehold_api::wire::ReleaseParams {
                    owner: "alice".into(),
                    token: held.token,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    };
    let (out, ()) = tokio::join!(waiting, release);
    let out = out.unwrap();
    let waited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        (waited["released"].as_bool(), waited["reason"].as_str()),
        (Some(true), Some("released"))
    );
    let (code, history, text) = run_json(lh().args(["--json", "locks", "history", "cli/k"])).await;
    assert_eq!(code, 0, "{text}");
    let events: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(events.len() >= 2, "{history}");

    // Expirations.
    client
        .acquire_lock(
            "cli/short",
            leasehold_api::wire::AcquireRequest {
                owner: "gone".into(),
                ttl_ms: Some(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let expired = wait_until(Duration::from_secs(10), || async {
        let (_, v, _) = run_json(lh().args(["--json", "expired"])).await;
        v["expired"]
            .as_array()?
            .iter()
            .any(|e| e["key"] == "cli/short")
            .then_some(())
    })
    .await;
    assert!(expired.is_ok(), "the expiry is listed");

    // Semaphores.
    for owner in ["w1", "w2"] {
        client
            .acquire_semaphore(
                "cli/pool",
                leasehold_api::wire::SemaphoreAcquireRequest {
                    owner: owner.into(),
                    limit: 3,
                    ttl_ms: Some(10_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let out = lh()
        .args(["semaphores", "get", "cli/pool"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 of 3 slots held"), "{text}");
    let (code, list, text) = run_json(lh().args(["--json", "semaphores", "ls"])).await;
    assert_eq!(code, 0, "{text}");
    assert_eq!(list["semaphores"][0]["key"], "cli/pool", "{list}");
    let (code, _, text) = run_json(lh().args(["semaphores", "history", "cli/pool"])).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("owner=w1"), "{text}");

    // Names: register, taken (75), resign, history.
    let (code, reg, text) = run_json(lh().args([
        "--json", "names", "register", "svc/db", "--value", "10.0.0.1", "--owner", "a", "--ttl",
        "10s",
    ]))
    .await;
    assert_eq!(code, 0, "{text}");
    let token = reg["token"].as_u64().unwrap().to_string();
    let (code, _, text) =
        run_json(lh().args(["names", "register", "svc/db", "--owner", "b"])).await;
    assert_eq!(code, NOT_ACQUIRED, "{text}");
    let (code, _, text) = run_json(lh().args([
        "names",
        "resign",
        "svc/db",
        "--owner",
        "a",
        "--fencing-token",
        &token,
    ]))
    .await;
    assert_eq!(code, 0, "{text}");
    let (code, _, text) = run_json(lh().args(["names", "history", "svc/db"])).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("owner=a"), "{text}");

    // Status names each member's lag (the CLI finds the leader among the endpoints).
    let out = lh().arg("status").output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.matches("lag ").count(), 3, "{text}");
    cluster.shutdown().await;
}

/// `leasehold completions SHELL` prints a script the shell accepts, knowing the commands.
#[tokio::test]
async fn completions_are_generated_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(leasehold_bin())
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["snapshot", "semaphores", "expired", "keepalive"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // bash parses its script.
    let out = Command::new(leasehold_bin())
        .args(["completions", "bash"])
        .output()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leasehold.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .await
        .unwrap();
    assert!(check.success(), "bash -n rejects the completion script");
}

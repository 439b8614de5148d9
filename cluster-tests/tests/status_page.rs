//! The status page at `/`, driven in headless Chromium (Debian's `chromium`, installed by
//! `scripts/test-deps.sh`) against a live three-node cluster: with a held lock, a queued
//! waiter, a name, a semaphore with 2 of 3 slots held and an expired lock, the rendered
//! DOM shows each; after the lock is released, the page shows the new holder without a
//! reload. Screenshots go to `target/screenshots/`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use leasehold_api::wire::{ReadParams, RegisterRequest, ReleaseParams, SemaphoreAcquireRequest};
use leasehold_api::{Client, LeaseService};
use leasehold_cluster_tests::{acquire_request as acquire, wait_until, TestCluster};

fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "chromium is missing: run scripts/test-deps.sh (installs Debian's `chromium`)"
    );
    path
}

/// The page's visible text, as a browser renders it.
fn text(tab: &Tab) -> String {
    tab.evaluate("document.body.innerText", false)
        .ok()
        .and_then(|v| v.value)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Run `js` (an expression giving a string) in the page.
fn eval(tab: &Tab, js: &str) -> String {
    tab.evaluate(js, false)
        .ok()
        .and_then(|v| v.value)
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// Poll the page until `ok(page)` holds (the page updates itself; we never reload it).
fn wait_for_page(tab: &Tab, what: &str, ok: impl Fn(&Tab) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ok(tab) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the page never showed {what}; it shows:\n{}", text(tab));
}

fn screenshot(tab: &Tab, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_the_cluster_live_in_a_real_browser() {
    let cluster = TestCluster::start3().await.unwrap();
    let client = Client::new([cluster.url(0)]).unwrap();

    // A lock held by alice with bob queued behind her, a name, 2 of 3 slots, an expiry.
    let alice = client
        .acquire_lock("demo/held", acquire("alice", 30_000, None))
        .await
        .unwrap();
    let bob = {
        let c = client.clone();
        tokio::spawn(async move {
            c.acquire_lock("demo/held", acquire("bob", 30_000, Some(60_000)))
                .await
        })
    };
    client
        .register_name(
            "svc/primary",
            RegisterRequest {
                owner: "node-a".into(),
                value: Some("10.0.0.7:5432".into()),
                ttl_ms: Some(30_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for owner in ["worker-1", "worker-2"] {
        client
            .acquire_semaphore(
                "jobs/pool",
                SemaphoreAcquireRequest {
                    owner: owner.into(),
                    limit: 3,
                    ttl_ms: Some(30_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    client
        .acquire_lock("demo/expired", acquire("crashed", 500, None))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), || async {
        let held = client
            .get_lock("demo/held", ReadParams::default())
            .await
            .ok()?;
        let gone = client
            .get_lock("demo/expired", ReadParams::default())
            .await
            .ok()?;
        (held.waiters == 1 && !gone.held).then_some(())
    })
    .await
    .expect("bob queued and the short lock expired");

    let url = cluster.url(1);
    let browser = tokio::task::spawn_blocking(move || {
        let options = LaunchOptions {
            path: Some(chromium()),
            headless: true,
            sandbox: false,
            window_size: Some((1280, 1200)),
            idle_browser_timeout: Duration::from_secs(120),
            args: [
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ]
            .iter()
            .map(OsStr::new)
            .collect(),
            ..Default::default()
        };
        let browser = Browser::new(options).expect("chromium starts");
        let tab = browser.new_tab().unwrap();
        tab.navigate_to(&url)
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        (browser, tab)
    })
    .await
    .unwrap();
    let (_browser, tab): (Browser, Arc<Tab>) = browser;

    let page = tab.clone();
    tokio::task::spawn_blocking(move || {
        let tab = &*page;
        // Every row, by its data attribute and what it says.
        let row = |selector: &str| {
            eval(
                tab,
                &format!("(document.querySelector('{selector}') || {{innerText: ''}}).innerText"),
            )
        };
        wait_for_page(tab, "alice holding demo/held with bob queued", |_| {
            let r = row("tr[data-lock=\"demo/held\"]");
            r.contains("alice") && r.contains("bob")
        });
        wait_for_page(tab, "the name", |_| {
            row("tr[data-name=\"svc/primary\"]").contains("10.0.0.7:5432")
        });
        wait_for_page(tab, "the semaphore with 2 of 3 slots", |_| {
            let r = row("tr[data-semaphore=\"jobs/pool\"]");
            r.contains("2 of 3") && r.contains("worker-1") && r.contains("worker-2")
        });
        wait_for_page(tab, "the expired lock", |_| {
            row("tr[data-expired=\"demo/expired\"]").contains("crashed")
        });
        // Served by a follower, the members' reachability and lag are the leader's view.
        wait_for_page(tab, "three reachable members, a leader and their lag", |_| {
            let members = eval(
                tab,
                "[...document.querySelectorAll('tr[data-member]')].map(r => r.innerText).join('\\n')",
            );
            members.lines().count() == 3
                && members.lines().all(|m| m.contains("yes") && m.contains("entries"))
                && members.contains("leader")
        });
        // A key's history on click.
        eval(
            tab,
            "document.querySelector('span.key[data-key=\"demo/held\"]').click(), 'clicked'",
        );
        wait_for_page(tab, "the history of demo/held", |_| {
            eval(tab, "document.getElementById('history').innerText").contains("alice")
        });
        // The charts have samples (one every 2 s).
        wait_for_page(tab, "chart samples", |_| {
            eval(
                tab,
                "document.getElementById('chart-grants').getAttribute('data-points')",
            )
            .parse::<u32>()
            .is_ok_and(|n| n >= 1)
        });
        screenshot(tab, "status-page-before-release.png");
        // Mark the document: a reload would lose the mark.
        eval(tab, "window.__notReloaded = 'yes'");
    })
    .await
    .unwrap();

    client
        .release_lock(
            "demo/held",
            ReleaseParams {
                owner: "alice".into(),
                token: alice.token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let granted = bob.await.unwrap().expect("bob got the lock");
    assert_eq!(granted.owner, "bob");

    let page = tab.clone();
    tokio::task::spawn_blocking(move || {
        let tab = &*page;
        wait_for_page(tab, "bob as the new holder, without a reload", |_| {
            let r = eval(
                tab,
                "(document.querySelector('tr[data-lock=\"demo/held\"] td.holder') || {innerText: ''}).innerText",
            );
            r == "bob"
        });
        assert_eq!(eval(tab, "window.__notReloaded"), "yes", "the page was reloaded");
        screenshot(tab, "status-page-after-release.png");
    })
    .await
    .unwrap();
    cluster.shutdown().await;
}

//! Heap bytes per lease of the replicated state alone (no Raft log, no sled, no HTTP).
//!
//! `cargo run --release -p leasehold-raft --example state_mem -- 100000`
//!
//! Fills a [`LeaseState`] with N locks, each held under its own implicit lease and
//! acquired with a `request_id` (as the clients send), and prints the live heap per lease
//! measured by a counting allocator, and what a snapshot costs: the clone taken under the
//! state lock and the encoding done off it. `NO_IDS=1` leaves out the request ids (and so
//! the dedupe window).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use leasehold_raft::command::{Acquire, Batch, Command, Kind, LeaseSpec, Proposal};
use leasehold_raft::state::LeaseState;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N"))
        .unwrap_or(100_000);
    let with_ids = std::env::var("NO_IDS").is_err();
    let mut state = LeaseState::default();
    let mut events = Vec::new();
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        let proposal = Proposal::trusted(
            with_ids.then(|| format!("{:032x}", i as u128 * 7919)),
            Command::Acquire(Acquire {
                kind: Kind::Lock,
                key: format!("scale/{i:08}"),
                owner: format!("loadgen-{}", i % 64),
                lease: LeaseSpec::New { ttl_ms: 600_000 },
                wait: false,
                value: None,
                lock_delay_ms: 0,
                limit: 1,
                max_waiters: 1024,
                max_leases: u64::MAX,
            }),
        );
        let batch = Batch::new(1_000 + i as u64, vec![proposal]);
        state.apply_batch(i as u64 + 1, 1, &batch, &mut events);
        events.clear();
    }
    let full = LIVE.load(Ordering::Relaxed) - before;
    let started = std::time::Instant::now();
    let copy = state.clone();
    let clone_us = started.elapsed().as_micros();
    let started = std::time::Instant::now();
    let encoded = copy.encode().len();
    let encode_ms = started.elapsed().as_millis();
    println!(
        "snapshot: clone {clone_us} µs (under the state lock), encode {encode_ms} ms (off it)"
    );
    use leasehold_raft::state::{HistoryRecord, Hold, Lease, Resource};
    println!(
        "sizes: Lease {} Resource {} Hold {} HistoryRecord {}",
        std::mem::size_of::<Lease>(),
        std::mem::size_of::<Resource>(),
        std::mem::size_of::<Hold>(),
        std::mem::size_of::<HistoryRecord>()
    );
    println!(
        "{n} leases: state heap {full} B = {} B/lease; snapshot encoding {encoded} B = {} B/lease",
        full / n,
        encoded / n
    );
}
#[allow(dead_code)]
fn sizes() {}

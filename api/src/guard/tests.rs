use std::time::Duration;

use super::{Fence, GuardError, GuardOptions};

#[test]
fn fence_rejects_older_tokens_per_resource() {
    let fence = Fence::new();
    fence.check("a", 5).unwrap();
    fence.check("a", 5).unwrap();
    fence.check("a", 7).unwrap();
    let err = fence.check("a", 6).unwrap_err();
    assert_eq!((err.token, err.highest), (6, 7));
    fence.check("b", 1).unwrap();
    assert_eq!(fence.highest("a"), Some(7));
}

#[test]
fn heartbeat_must_be_below_half_the_ttl() {
    let mut opts = GuardOptions {
        ttl: Duration::from_secs(3),
        ..GuardOptions::default()
    };
    assert_eq!(opts.heartbeat().unwrap(), Duration::from_secs(1));
    opts.heartbeat = Some(Duration::from_millis(1500));
    assert!(matches!(opts.heartbeat(), Err(GuardError::Options(_))));
    opts.heartbeat = Some(Duration::from_millis(1499));
    assert!(opts.heartbeat().is_ok());
    opts.drift = 0.6;
    assert!(opts.heartbeat().is_err());
}

//! Input validation shared by every implementation of the service (embedded and HTTP), so
//! bad input gets the same 4xx naming the field and the rule wherever it comes from.

use crate::error::ApiError;
use crate::wire::*;

/// Longest `owner` string.
pub const MAX_OWNER_BYTES: usize = 256;
/// Longest `request_id`.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Default page size of list requests.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The limits a service enforces: the `[limits]` section of the node's config (SPEC §5),
/// one type with one set of defaults, defined in `leasehold-config`.
pub use leasehold_config::Limits;

fn printable(field: &str, s: &str) -> Result<(), ApiError> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(ApiError::invalid(
            field,
            format!(
                "must not contain control characters (found U+{:04X})",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// A key or name: non-empty, at most `max_key_bytes`, no control characters.
pub fn key(field: &str, key: &str, limits: &Limits) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::too_large(
            field,
            format!(
                "must be at most {} bytes, got {}",
                limits.max_key_bytes,
                key.len()
            ),
        ));
    }
    printable(field, key)?;
    for action in ["/extend", "/wait", "/history"] {
        if key.ends_with(action) {
            return Err(ApiError::invalid(
                field,
                format!("must not end with {action:?} (reserved for the action routes)"),
            ));
        }
    }
    Ok(())
}

pub fn owner(owner: &str) -> Result<(), ApiError> {
    if owner.is_empty() {
        return Err(ApiError::invalid("owner", "must not be empty"));
    }
    if owner.len() > MAX_OWNER_BYTES {
        return Err(ApiError::invalid(
            "owner",
            format!(
                "must be at most {MAX_OWNER_BYTES} bytes, got {}",
                owner.len()
            ),
        ));
    }
    printable("owner", owner)
}

pub fn ttl_ms(field: &str, ttl_ms: u64, limits: &Limits) -> Result<(), ApiError> {
    if ttl_ms < limits.min_ttl_ms || ttl_ms > limits.max_ttl_ms {
        return Err(ApiError::invalid(
            field,
            format!(
                "must be between {} and {}, got {ttl_ms}",
                limits.min_ttl_ms, limits.max_ttl_ms
            ),
        ));
    }
    Ok(())
}

pub fn wait_ms(wait_ms: Option<u64>, limits: &Limits) -> Result<(), ApiError> {
    match wait_ms {
        Some(w) if w > limits.max_wait_ms => Err(ApiError::invalid(
            "wait_ms",
            format!(
                "must be at most {} (limits.max_wait_ms), got {w}",
                limits.max_wait_ms
            ),
        )),
        _ => Ok(()),
    }
}

pub fn value(value: Option<&str>, limits: &Limits) -> Result<(), ApiError> {
    match value {
        Some(v) if v.len() > limits.max_value_bytes => Err(ApiError::too_large(
            "value",
            format!(
                "must be at most {} bytes, got {}",
                limits.max_value_bytes,
                v.len()
            ),
        )),
        _ => Ok(()),
    }
}

pub fn lock_delay_ms(delay: Option<u64>, limits: &Limits) -> Result<(), ApiError> {
    match delay {
        Some(d) if d > limits.max_ttl_ms => Err(ApiError::invalid(
            "lock_delay_ms",
            format!(
                "must be at most {} (limits.max_ttl_ms), got {d}",
                limits.max_ttl_ms
            ),
        )),
        _ => Ok(()),
    }
}

pub fn semaphore_limit(limit: u32, limits: &Limits) -> Result<(), ApiError> {
    if limit == 0 || limit > limits.max_waiters_per_key {
        return Err(ApiError::invalid(
            "limit",
            format!(
                "must be between 1 and {}, got {limit}",
                limits.max_waiters_per_key
            ),
        ));
    }
    Ok(())
}

pub fn request_id(id: Option<&str>) -> Result<(), ApiError> {
    let Some(id) = id else { return Ok(()) };
    if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ApiError::invalid(
            "request_id",
            format!(
                "must be 1 to {MAX_REQUEST_ID_BYTES} bytes, got {}",
                id.len()
            ),
        ));
    }
    printable("request_id", id)
}

/// A page size: 1..=max_list_limit, default [`DEFAULT_LIST_LIMIT`].
pub fn list_limit(limit: Option<usize>, limits: &Limits) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIST_LIMIT.min(limits.max_list_limit)),
        Some(l) if l == 0 || l > limits.max_list_limit => Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {}, got {l}", limits.max_list_limit),
        )),
        Some(l) => Ok(l),
    }
}

/// Exactly one of `ttl_ms` (a new implicit lease) and `lease_id` (an existing one).
pub fn lease_choice(
    ttl: Option<u64>,
    lease_id: Option<u64>,
    limits: &Limits,
) -> Result<(), ApiError> {
    match (ttl, lease_id) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "ttl_ms",
            "give either ttl_ms (a new lease) or lease_id (an existing lease), not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "ttl_ms",
            "required: give ttl_ms (a new lease) or lease_id (an existing lease)",
        )),
        (Some(t), None) => ttl_ms("ttl_ms", t, limits),
        (None, Some(_)) => Ok(()),
    }
}

pub fn create_lease(req: &CreateLeaseRequest, limits: &Limits) -> Result<(), ApiError> {
    ttl_ms("ttl_ms", req.ttl_ms, limits)?;
    if let Some(o) = &req.owner {
        owner(o)?;
    }
    request_id(req.request_id.as_deref())
}

pub fn acquire(k: &str, req: &AcquireRequest, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    owner(&req.owner)?;
    lease_choice(req.ttl_ms, req.lease_id, limits)?;
    wait_ms(req.wait_ms, limits)?;
    value(req.value.as_deref(), limits)?;
    lock_delay_ms(req.lock_delay_ms, limits)?;
    request_id(req.request_id.as_deref())
}

pub fn semaphore_acquire(
    k: &str,
    req: &SemaphoreAcquireRequest,
    limits: &Limits,
) -> Result<(), ApiError> {
    key("key", k, limits)?;
    owner(&req.owner)?;
    semaphore_limit(req.limit, limits)?;
    lease_choice(req.ttl_ms, req.lease_id, limits)?;
    wait_ms(req.wait_ms, limits)?;
    value(req.value.as_deref(), limits)?;
    request_id(req.request_id.as_deref())
}

pub fn extend(k: &str, req: &ExtendRequest, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    owner(&req.owner)?;
    if let Some(t) = req.ttl_ms {
        ttl_ms("ttl_ms", t, limits)?;
    }
    request_id(req.request_id.as_deref())
}

pub fn release(k: &str, params: &ReleaseParams, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    request_id(params.request_id.as_deref())?;
    if params.force == Some(true) {
        // An operator's release names no owner: it ends the hold whoever owns it.
        if !params.owner.is_empty() {
            return Err(ApiError::invalid(
                "owner",
                "must not be given with force=true (a force release ends the hold whoever owns it; name the hold with token=N)",
            ));
        }
        return Ok(());
    }
    owner(&params.owner)?;
    if params.token == 0 {
        return Err(ApiError::invalid(
            "token",
            "is required: the fencing token the grant returned (tokens start at 1)",
        ));
    }
    Ok(())
}

pub fn read(k: &str, params: &ReadParams, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    wait_ms(params.wait_ms, limits)?;
    if params.wait_ms.is_some() && params.index.is_none() {
        return Err(ApiError::invalid(
            "index",
            "required with wait_ms: pass the X-Leasehold-Index of your last read",
        ));
    }
    Ok(())
}

pub fn wait_release(k: &str, params: &WaitReleaseParams, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    wait_ms(params.wait_ms, limits)
}

pub fn list(params: &ListParams, limits: &Limits) -> Result<usize, ApiError> {
    if let Some(p) = &params.prefix {
        if p.len() > limits.max_key_bytes {
            return Err(ApiError::invalid(
                "prefix",
                format!("must be at most {} bytes", limits.max_key_bytes),
            ));
        }
        printable("prefix", p)?;
    }
    if let Some(a) = &params.after {
        if a.len() > limits.max_key_bytes {
            return Err(ApiError::invalid(
                "after",
                format!("must be at most {} bytes", limits.max_key_bytes),
            ));
        }
    }
    list_limit(params.limit, limits)
}

pub fn register(name: &str, req: &RegisterRequest, limits: &Limits) -> Result<(), ApiError> {
    key("name", name, limits)?;
    owner(&req.owner)?;
    lease_choice(req.ttl_ms, req.lease_id, limits)?;
    wait_ms(req.wait_ms, limits)?;
    value(req.value.as_deref(), limits)?;
    request_id(req.request_id.as_deref())
}

pub fn proclaim(name: &str, req: &ProclaimRequest, limits: &Limits) -> Result<(), ApiError> {
    key("name", name, limits)?;
    owner(&req.owner)?;
    value(req.value.as_deref(), limits)?;
    request_id(req.request_id.as_deref())
}

pub fn add_member(req: &AddMemberRequest) -> Result<(), ApiError> {
    if req.id == 0 {
        return Err(ApiError::invalid("id", "must be greater than 0"));
    }
    if req.peer_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::invalid(
            "peer_addr",
            format!("must be <ip:port>, got {:?}", req.peer_addr),
        ));
    }
    if !req.client_addr.is_empty() && req.client_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::invalid(
            "client_addr",
            format!("must be <ip:port>, got {:?}", req.client_addr),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn keys() {
        let l = limits();
        assert!(key("key", "jobs:sitemap/1", &l).is_ok());
        assert_eq!(
            key("key", "", &l).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let long = "k".repeat(513);
        let e = key("key", &long, &l).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        assert!(e.message.starts_with("key: "), "{}", e.message);
        let e = key("key", "a\nb", &l).unwrap_err();
        assert!(e.message.contains("control"), "{}", e.message);
    }

    #[test]
    fn ttls_and_waits() {
        let l = limits();
        assert!(ttl_ms("ttl_ms", 500, &l).is_ok());
        let e = ttl_ms("ttl_ms", 10, &l).unwrap_err();
        assert_eq!(
            e.message,
            "ttl_ms: must be between 500 and 86400000, got 10"
        );
        assert!(wait_ms(Some(300_000), &l).is_ok());
        assert!(wait_ms(Some(300_001), &l).is_err());
    }

    #[test]
    fn acquire_needs_exactly_one_lease_choice() {
        let l = limits();
        let mut req = AcquireRequest {
            owner: "o".into(),
            ..Default::default()
        };
        assert!(acquire("k", &req, &l).is_err());
        req.ttl_ms = Some(1000);
        assert!(acquire("k", &req, &l).is_ok());
        req.lease_id = Some(3);
        assert!(acquire("k", &req, &l)
            .unwrap_err()
            .message
            .contains("not both"));
        req.ttl_ms = None;
        assert!(acquire("k", &req, &l).is_ok());
        req.owner = String::new();
        assert!(acquire("k", &req, &l)
            .unwrap_err()
            .message
            .starts_with("owner:"));
    }

    #[test]
    fn values_and_lists() {
        let l = limits();
        let big = "v".repeat(65_537);
        assert_eq!(
            value(Some(&big), &l).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
        assert_eq!(list_limit(None, &l).unwrap(), 100);
        assert!(list_limit(Some(0), &l).is_err());
        assert!(list_limit(Some(1001), &l).is_err());
        assert!(semaphore_limit(0, &l).is_err());
        assert!(request_id(Some(&"r".repeat(129))).is_err());
    }
}

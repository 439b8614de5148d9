//! Input validation shared by every implementation of the service (embedded and HTTP), so
//! bad input gets the same 4xx naming the field and the rule wherever it comes from.

use crate::error::ApiError;
use crate::wire::*;

/// Longest `owner` string, in characters.
pub const MAX_OWNER_CHARS: usize = 256;
/// Longest `request_id`, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Default page size of list requests.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// JSON's safe integer range (2^53 - 1): every id, token and index a request carries stays
/// in it, so a client in any language (JavaScript's numbers included) reads it exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The limits a service enforces: the `[limits]` section of the node's config (SPEC §5),
/// one type with one set of defaults, defined in `leasehold-config`.
pub use leasehold_config::Limits;

/// What one field must be. This is the single statement of each rule: the validators below
/// check input against it, and the OpenAPI document states it ([`rule_for`] is called for
/// every body field and parameter when `openapi::document` is built from a node's limits),
/// so the document cannot promise what the server refuses or allow what it forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A string of `min..=max` characters. Lengths count Unicode scalar values, as JSON
    /// Schema's `minLength`/`maxLength` do (so a limit named `..._bytes` in the config
    /// bounds characters; a character is at most 4 bytes of UTF-8).
    Text {
        min: usize,
        max: usize,
        /// No control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F).
        printable: bool,
        /// A key or name: also must not end in an action route's suffix.
        key: bool,
        /// Over `max` is 413 `payload_too_large` (keys, names, values), not 400.
        oversize_is_413: bool,
    },
    /// An integer in `min..=max`.
    Int { min: u64, max: u64 },
}

/// The action routes a key must not end with (they would be taken for the action).
pub const RESERVED_KEY_SUFFIXES: [&str; 3] = ["/extend", "/wait", "/history"];

/// Where a field is: in the JSON body of the component schema named, or a query parameter
/// of the operation on the path named, or a path parameter.
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    Body(&'a str),
    Query(&'a str),
    Path,
}

impl Rule {
    fn text(min: usize, max: usize) -> Rule {
        Rule::Text {
            min,
            max,
            printable: true,
            key: false,
            oversize_is_413: false,
        }
    }

    /// A key or name: 1 to `limits.max_key_bytes` characters, printable, not ending in
    /// `/extend`, `/wait` or `/history`.
    pub fn key(limits: &Limits) -> Rule {
        Rule::Text {
            min: 1,
            max: limits.max_key_bytes,
            printable: true,
            key: true,
            oversize_is_413: true,
        }
    }

    /// An owner: 1 to [`MAX_OWNER_CHARS`] printable characters (`min` 0 where it may be
    /// left out: a release's query).
    pub fn owner(min: usize) -> Rule {
        Rule::text(min, MAX_OWNER_CHARS)
    }

    pub fn request_id() -> Rule {
        Rule::text(1, MAX_REQUEST_ID_CHARS)
    }

    /// A value: anything up to `limits.max_value_bytes` characters.
    pub fn value(limits: &Limits) -> Rule {
        Rule::Text {
            min: 0,
            max: limits.max_value_bytes,
            printable: false,
            key: false,
            oversize_is_413: true,
        }
    }

    pub fn ttl_ms(limits: &Limits) -> Rule {
        Rule::Int {
            min: limits.min_ttl_ms,
            max: limits.max_ttl_ms,
        }
    }

    pub fn wait_ms(limits: &Limits) -> Rule {
        Rule::Int {
            min: 0,
            max: limits.max_wait_ms,
        }
    }

    pub fn lock_delay_ms(limits: &Limits) -> Rule {
        Rule::Int {
            min: 0,
            max: limits.max_ttl_ms,
        }
    }

    /// An id (lease, member): 1 to [`MAX_SAFE_INTEGER`].
    pub fn id() -> Rule {
        Rule::Int {
            min: 1,
            max: MAX_SAFE_INTEGER,
        }
    }

    /// A token or an index: 0 (none) to [`MAX_SAFE_INTEGER`].
    pub fn counter() -> Rule {
        Rule::Int {
            min: 0,
            max: MAX_SAFE_INTEGER,
        }
    }

    pub fn semaphore_limit(limits: &Limits) -> Rule {
        Rule::Int {
            min: 1,
            max: limits.max_waiters_per_key as u64,
        }
    }

    pub fn list_limit(limits: &Limits) -> Rule {
        Rule::Int {
            min: 1,
            max: limits.max_list_limit as u64,
        }
    }

    /// A list's `prefix` or `after` key: up to `limits.max_key_bytes` printable characters.
    pub fn key_bound(limits: &Limits) -> Rule {
        Rule::text(0, limits.max_key_bytes)
    }

    /// JSON Schema's `pattern` for a text rule, if it has one: no control characters, and
    /// for keys no reserved suffix (ECMA-262 syntax, which Python's `re` also reads).
    pub fn pattern(&self) -> Option<&'static str> {
        match self {
            Rule::Text { key: true, .. } => {
                Some(r"^(?!.*/(extend|wait|history)$)[^\u0000-\u001F\u007F-\u009F]*$")
            }
            Rule::Text {
                printable: true, ..
            } => Some(r"^[^\u0000-\u001F\u007F-\u009F]*$"),
            _ => None,
        }
    }

    /// Check a string against this rule; the error names `field` and the rule.
    pub fn check_text(&self, field: &str, s: &str) -> Result<(), ApiError> {
        let Rule::Text {
            min,
            max,
            printable,
            key,
            oversize_is_413,
        } = *self
        else {
            return Err(ApiError::invalid(field, "must be a string"));
        };
        if min > 0 && s.is_empty() {
            return Err(ApiError::invalid(field, "must not be empty"));
        }
        let chars = s.chars().count();
        if chars < min {
            return Err(ApiError::invalid(
                field,
                format!("must be at least {min} characters, got {chars}"),
            ));
        }
        if chars > max {
            let rule = format!("must be at most {max} characters, got {chars}");
            return Err(match oversize_is_413 {
                true => ApiError::too_large(field, rule),
                false => ApiError::invalid(field, rule),
            });
        }
        if printable {
            if let Some(c) = s.chars().find(|c| c.is_control()) {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "must not contain control characters (found U+{:04X})",
                        c as u32
                    ),
                ));
            }
        }
        if key {
            if let Some(action) = RESERVED_KEY_SUFFIXES.iter().find(|a| s.ends_with(*a)) {
                return Err(ApiError::invalid(
                    field,
                    format!("must not end with {action:?} (reserved for the action routes)"),
                ));
            }
        }
        Ok(())
    }

    /// Check an integer against this rule; the error names `field` and the range.
    pub fn check_int(&self, field: &str, n: u64) -> Result<(), ApiError> {
        let Rule::Int { min, max } = *self else {
            return Err(ApiError::invalid(field, "must be an integer"));
        };
        if n < min || n > max {
            return Err(ApiError::invalid(
                field,
                format!("must be between {min} and {max}, got {n}"),
            ));
        }
        Ok(())
    }
}

/// The rule of `field` at `place`, for the OpenAPI document; `None` for a field with no
/// rule beyond its type (`stale`, `force`) or one outside this table (membership).
pub fn rule_for(place: Place<'_>, field: &str, limits: &Limits) -> Option<Rule> {
    Some(match (place, field) {
        (Place::Path, "key" | "name") => Rule::key(limits),
        (Place::Path, "id") => Rule::id(),
        (Place::Query(_), "owner") => Rule::owner(0),
        (_, "owner") => Rule::owner(1),
        (_, "request_id") => Rule::request_id(),
        (_, "value") => Rule::value(limits),
        (_, "ttl_ms") => Rule::ttl_ms(limits),
        (_, "wait_ms") => Rule::wait_ms(limits),
        (_, "lock_delay_ms") => Rule::lock_delay_ms(limits),
        (_, "lease_id") => Rule::id(),
        (Place::Body("AddMemberRequest"), "id") => Rule::id(),
        (_, "token" | "index") => Rule::counter(),
        (Place::Body(_), "limit") => Rule::semaphore_limit(limits),
        (Place::Query(_), "limit") => Rule::list_limit(limits),
        (Place::Query("/v1/leases"), "after") => Rule::counter(),
        (Place::Query(_), "prefix" | "after") => Rule::key_bound(limits),
        _ => return None,
    })
}

/// The request bodies that take exactly one of two fields (a new lease's `ttl_ms`, or an
/// existing `lease_id`): checked by [`lease_choice`], stated as `oneOf` in the document.
pub fn exactly_one_of(schema: &str) -> Option<[&'static str; 2]> {
    matches!(
        schema,
        "AcquireRequest" | "SemaphoreAcquireRequest" | "RegisterRequest"
    )
    .then_some(["ttl_ms", "lease_id"])
}

/// A key or name: non-empty, at most `max_key_bytes` characters, no control characters.
pub fn key(field: &str, key: &str, limits: &Limits) -> Result<(), ApiError> {
    Rule::key(limits).check_text(field, key)
}

pub fn owner(owner: &str) -> Result<(), ApiError> {
    Rule::owner(1).check_text("owner", owner)
}

pub fn ttl_ms(field: &str, ttl_ms: u64, limits: &Limits) -> Result<(), ApiError> {
    Rule::ttl_ms(limits).check_int(field, ttl_ms)
}

fn optional_int(field: &str, n: Option<u64>, rule: Rule) -> Result<(), ApiError> {
    n.map_or(Ok(()), |n| rule.check_int(field, n))
}

fn optional_text(field: &str, s: Option<&str>, rule: Rule) -> Result<(), ApiError> {
    s.map_or(Ok(()), |s| rule.check_text(field, s))
}

pub fn wait_ms(wait_ms: Option<u64>, limits: &Limits) -> Result<(), ApiError> {
    optional_int("wait_ms", wait_ms, Rule::wait_ms(limits))
}

pub fn value(value: Option<&str>, limits: &Limits) -> Result<(), ApiError> {
    optional_text("value", value, Rule::value(limits))
}

pub fn lock_delay_ms(delay: Option<u64>, limits: &Limits) -> Result<(), ApiError> {
    optional_int("lock_delay_ms", delay, Rule::lock_delay_ms(limits))
}

pub fn semaphore_limit(limit: u32, limits: &Limits) -> Result<(), ApiError> {
    Rule::semaphore_limit(limits).check_int("limit", limit.into())
}

pub fn request_id(id: Option<&str>) -> Result<(), ApiError> {
    optional_text("request_id", id, Rule::request_id())
}

/// A token (0: none given) or an index.
pub fn counter(field: &str, n: Option<u64>) -> Result<(), ApiError> {
    optional_int(field, n, Rule::counter())
}

/// A page size: 1..=max_list_limit, default [`DEFAULT_LIST_LIMIT`].
pub fn list_limit(limit: Option<usize>, limits: &Limits) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIST_LIMIT.min(limits.max_list_limit)),
        Some(l) => {
            Rule::list_limit(limits).check_int("limit", l as u64)?;
            Ok(l)
        }
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
        (None, Some(id)) => Rule::id().check_int("lease_id", id),
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
    counter("token", Some(req.token))?;
    if let Some(t) = req.ttl_ms {
        ttl_ms("ttl_ms", t, limits)?;
    }
    request_id(req.request_id.as_deref())
}

/// A release names the hold by `owner` and `token`, or is an operator's `force=true`
/// (where `owner`, if given, narrows it to that owner's hold). Each parameter's rule stands
/// on its own, as the document states them: a release that names no hold is answered by
/// the service with 409 `not_owner` (it is not the holder), not refused here.
pub fn release(k: &str, params: &ReleaseParams, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    request_id(params.request_id.as_deref())?;
    Rule::owner(0).check_text("owner", &params.owner)?;
    counter("token", Some(params.token))
}

/// A read; `wait_ms` makes it a blocking query only together with `index` (as Consul's
/// `wait` does), and is ignored without it.
pub fn read(k: &str, params: &ReadParams, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    wait_ms(params.wait_ms, limits)?;
    counter("index", params.index)
}

pub fn wait_release(k: &str, params: &WaitReleaseParams, limits: &Limits) -> Result<(), ApiError> {
    key("key", k, limits)?;
    wait_ms(params.wait_ms, limits)?;
    counter("token", params.token)
}

pub fn list(params: &ListParams, limits: &Limits) -> Result<usize, ApiError> {
    optional_text("prefix", params.prefix.as_deref(), Rule::key_bound(limits))?;
    optional_text("after", params.after.as_deref(), Rule::key_bound(limits))?;
    list_limit(params.limit, limits)
}

/// A page of leases: `after` is a lease id.
pub fn lease_list(params: &LeaseListParams, limits: &Limits) -> Result<usize, ApiError> {
    counter("after", params.after)?;
    list_limit(params.limit, limits)
}

/// The status page's blocking query.
pub fn status(params: &StatusParams, limits: &Limits) -> Result<(), ApiError> {
    wait_ms(params.wait_ms, limits)?;
    counter("index", params.index)
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
    counter("token", Some(req.token))?;
    value(req.value.as_deref(), limits)?;
    request_id(req.request_id.as_deref())
}

/// A name's keepalive.
pub fn name_extend(name: &str, req: &NameExtendRequest, limits: &Limits) -> Result<(), ApiError> {
    key("name", name, limits)?;
    owner(&req.owner)?;
    counter("token", Some(req.token))?;
    request_id(req.request_id.as_deref())
}

pub fn add_member(req: &AddMemberRequest) -> Result<(), ApiError> {
    Rule::id().check_int("id", req.id)?;
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

//! The OpenAPI 3.1 description served at `GET /openapi.json` (SPEC §3).
//!
//! Schemas are derived from the wire types themselves (`utoipa::ToSchema` on every type in
//! [`crate::wire`] and [`crate::error`]), so they cannot drift from what the server
//! parses and sends. Operations come from [`OPERATIONS`], one row per method and path; a
//! test in `cluster-tests` checks every row against a live node (no row is a 404 or 405)
//! and that every route the router serves has a row.

//!
//! - `operations`: the [`OPERATIONS`] table and the types its rows are made of.
//! - `paths`: turning the table into the document's paths (parameters, bodies, responses).
//! - here: the component schemas and [`openapi`], which puts the document together.

mod operations;
mod paths;

pub use self::operations::{Input, Operation, Output, QueryKind, OPERATIONS};

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa::OpenApi as _;

use crate::error::{ApiError, Envelope, ErrorCode};
use crate::wire::*;

/// Every component schema, derived from the wire types.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    CreateLeaseRequest,
    AcquireRequest,
    SemaphoreAcquireRequest,
    ExtendRequest,
    RegisterRequest,
    ProclaimRequest,
    NameExtendRequest,
    AddMemberRequest,
    LeaseGrant,
    KeepaliveResponse,
    RevokeResponse,
    LeaseInfo,
    LeaseList,
    LockHolder,
    HolderSummary,
    ExtendResponse,
    ReleaseResponse,
    LockState,
    HolderFields,
    ReleaseReason,
    WaitReleaseResponse,
    HistoryEventKind,
    HistoryEvent,
    HistoryResponse,
    LockList,
    ResourceKind,
    ExpiredEntry,
    ExpiredList,
    SemaphoreSlot,
    SemaphoreState,
    SemaphoreList,
    QueuedWaiter,
    NameRecord,
    NameState,
    Vacancy,
    NameFields,
    NameList,
    MemberStatus,
    ClusterStatus,
    StatusView,
    StatusSample,
    ErrorCode,
    ApiError,
    Envelope,
)))]
struct Components;

/// The API description.
/// The methods the document lists for the operation `path` (a request path) belongs to, in
/// the table's order, or `None` for a path it does not describe. Paths are matched against
/// the templates of [`OPERATIONS`]: `{id}` is one segment; `{key}` and `{name}` are one or
/// more, and an action suffix (`/extend`, `/wait`, `/history`) makes the more specific
/// template win. The router answers any other method with 405 and exactly these in
/// `Allow`, so the document and the server agree on every route.
pub fn documented_methods(path: &str) -> Option<Vec<&'static str>> {
    let mut best: Option<(usize, &'static str)> = None;
    for o in OPERATIONS {
        let Some(specificity) = template_matches(o.path, path) else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, o.path));
        }
    }
    let (_, template) = best?;
    Some(
        OPERATIONS
            .iter()
            .filter(|o| o.path == template)
            .map(|o| o.method)
            .collect(),
    )
}

/// Does `template` match `path`? `Some(length of its fixed text)` (longer is more
/// specific) if so.
fn template_matches(template: &str, path: &str) -> Option<usize> {
    let Some(open) = template.find('{') else {
        return (template == path).then_some(template.len());
    };
    let close = template[open..].find('}')? + open;
    let (prefix, param, suffix) = (
        &template[..open],
        &template[open + 1..close],
        &template[close + 1..],
    );
    let value = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let ok = match param {
        "id" => !value.is_empty() && !value.contains('/'),
        _ => !value.is_empty(),
    };
    ok.then_some(prefix.len() + suffix.len())
}

/// The document a node serves: [`openapi_for`] with every rule of [`crate::validate`]
/// stated where it applies, from the node's own `limits` (lengths and patterns of strings,
/// ranges of integers, on every request body field and parameter; "exactly one of `ttl_ms`
/// and `lease_id`" on the bodies that take a lease). The validators read the same rules,
/// so a request the document allows is one the server accepts, as far as its input goes.
pub fn document(auth: bool, limits: &crate::validate::Limits) -> serde_json::Value {
    use crate::validate::{exactly_one_of, rule_for, Place};
    let mut doc = serde_json::to_value(openapi_for(auth)).expect("the document serializes");
    let bodies: Vec<&str> = OPERATIONS
        .iter()
        .filter_map(|o| match o.input {
            Input::Body(schema) => Some(schema),
            _ => None,
        })
        .collect();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        for (name, schema) in schemas.iter_mut() {
            if !bodies.contains(&name.as_str()) {
                continue;
            }
            if let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
                for (field, property) in properties.iter_mut() {
                    if let Some(rule) = rule_for(Place::Body(name), field, limits) {
                        state_rule(property, rule);
                    }
                }
            }
            if let Some(fields) = exactly_one_of(name) {
                // Given means a number: the server reads `null` as absent, so a branch
                // needs the field present and an integer, not merely present.
                let given = |field: &str| {
                    serde_json::json!({
                        "required": [field],
                        "properties": {field: {"type": "integer"}},
                    })
                };
                schema["oneOf"] = serde_json::json!([given(fields[0]), given(fields[1])]);
            }
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for operation in item.values_mut() {
                let Some(parameters) = operation
                    .get_mut("parameters")
                    .and_then(|p| p.as_array_mut())
                else {
                    continue;
                };
                for parameter in parameters {
                    let name = parameter["name"].as_str().unwrap_or_default().to_string();
                    let place = match parameter["in"].as_str() {
                        Some("path") => Place::Path,
                        _ => Place::Query(path),
                    };
                    if let Some(rule) = rule_for(place, &name, limits) {
                        state_rule(&mut parameter["schema"], rule);
                    }
                }
            }
        }
    }
    doc
}

/// Write `rule` into a JSON Schema object.
fn state_rule(schema: &mut serde_json::Value, rule: crate::validate::Rule) {
    use crate::validate::Rule;
    let Some(schema) = schema.as_object_mut() else {
        return;
    };
    match rule {
        Rule::Text { min, max, .. } => {
            if min > 0 {
                schema.insert("minLength".into(), min.into());
            }
            schema.insert("maxLength".into(), max.into());
            if let Some(pattern) = rule.pattern() {
                schema.insert("pattern".into(), pattern.into());
            }
        }
        Rule::Int { min, max } => {
            schema.insert("minimum".into(), min.into());
            schema.insert("maximum".into(), max.into());
        }
    }
}

pub fn openapi() -> OpenApi {
    openapi_for(true)
}

/// The description of a node with `[auth]` (`auth`: bearer tokens, 401 and 403 on every
/// `/v1` operation) or without (neither): a node serves the one that is true of it, so a
/// client generated from it, or a fuzzer, sees what the node does.
pub fn openapi_for(auth: bool) -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("leasehold")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Locks, leases and a name registry on a three-node Raft cluster. Durations \
                     are integer milliseconds with the unit in the name.",
                ))
                .build(),
        )
        .paths(paths::paths(auth))
        .components(Components::openapi().components.map(|mut components| {
            if !auth {
                return components;
            }
            components.add_security_scheme(
                paths::BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "when the node has [auth]: a token from its tokens_file (SPEC §5 \"Auth\"); /healthz, /readyz, /metrics, /openapi.json and / need none",
                        ))
                        .build(),
                ),
            );
            components
        }))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document states the rules of the node it describes, from its limits, and the
    /// validators refuse exactly past them.
    #[test]
    fn the_document_states_the_rules_the_validators_enforce() {
        use crate::validate::{self, Limits};
        let limits = Limits {
            max_wait_ms: 1234,
            max_key_bytes: 40,
            ..Limits::default()
        };
        let doc = document(false, &limits);
        let acquire = &doc["components"]["schemas"]["AcquireRequest"];
        assert_eq!(acquire["properties"]["wait_ms"]["maximum"], 1234);
        assert_eq!(acquire["properties"]["owner"]["minLength"], 1);
        assert_eq!(acquire["properties"]["owner"]["maxLength"], 256);
        assert_eq!(acquire["oneOf"].as_array().map(Vec::len), Some(2));
        let key = &doc["paths"]["/v1/locks/{key}"]["post"]["parameters"][0]["schema"];
        assert_eq!(key["maxLength"], 40);
        assert!(key["pattern"]
            .as_str()
            .unwrap()
            .contains("extend|wait|history"));
        let list = &doc["paths"]["/v1/leases"]["get"]["parameters"];
        let after = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "after")
            .unwrap();
        assert_eq!(after["schema"]["maximum"], validate::MAX_SAFE_INTEGER);
        // Response schemas carry no request rules.
        assert!(
            doc["components"]["schemas"]["LockHolder"]["properties"]["owner"]["minLength"]
                .is_null()
        );
        // The validators: at the limit accepted, past it refused; lengths in characters.
        assert!(validate::key("key", &"é".repeat(40), &limits).is_ok());
        assert!(validate::key("key", &"k".repeat(41), &limits).is_err());
        assert!(validate::wait_ms(Some(1234), &limits).is_ok());
        assert!(validate::wait_ms(Some(1235), &limits).is_err());
        assert!(validate::key("key", "a/wait", &limits).is_err());
        assert!(validate::owner("\u{85}").is_err(), "a C1 control character");
    }

    #[test]
    fn the_bearer_scheme_and_its_errors_appear_only_with_auth() {
        let doc = |auth| serde_json::to_value(openapi_for(auth)).unwrap();
        let (with, without) = (doc(true), doc(false));
        let op = |d: &serde_json::Value| d["paths"]["/v1/locks/{key}"]["post"].clone();
        assert!(with["components"]["securitySchemes"][paths::BEARER].is_object());
        assert!(op(&with)["security"].is_array());
        assert!(op(&with)["responses"]["401"].is_object());
        assert!(without["components"]["securitySchemes"].is_null());
        assert!(op(&without)["security"].is_null());
        assert!(op(&without)["responses"]["401"].is_null());
        assert!(op(&without)["responses"]["400"].is_object());
    }

    #[test]
    fn every_path_gets_exactly_its_documented_methods() {
        assert_eq!(
            documented_methods("/v1/locks/a/b").unwrap(),
            vec!["POST", "GET", "DELETE"]
        );
        assert_eq!(
            documented_methods("/v1/locks/a/b/extend").unwrap(),
            vec!["POST"]
        );
        assert_eq!(documented_methods("/v1/locks/a/wait").unwrap(), vec!["GET"]);
        assert_eq!(
            documented_methods("/v1/leases/7/keepalive").unwrap(),
            vec!["POST"]
        );
        assert!(documented_methods("/v1/leases/7/8").is_none());
        assert!(documented_methods("/v1/nowhere").is_none());
        assert_eq!(documented_methods("/v1/cluster").unwrap(), vec!["GET"]);
    }

    #[test]
    fn every_schema_an_operation_names_is_a_component() {
        let doc = serde_json::to_value(openapi()).expect("serializes");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = doc.to_string();
        for name in text
            .split("\"#/components/schemas/")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap_or(""))
        {
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
        for o in OPERATIONS {
            let method = o.method.to_lowercase();
            assert!(
                doc["paths"][o.path][&method]["responses"][o.status.to_string()].is_object(),
                "{} {} is missing",
                o.method,
                o.path
            );
        }
    }

    #[test]
    fn request_schemas_follow_the_wire_types() {
        let doc = serde_json::to_value(openapi()).expect("serializes");
        let acquire = &doc["components"]["schemas"]["AcquireRequest"];
        let required: Vec<&str> = acquire["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, ["owner"]);
        assert!(acquire["properties"]["lock_delay_ms"].is_object());
    }
}

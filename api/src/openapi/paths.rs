//! Building the document's paths from [`OPERATIONS`]: path parameters, request bodies,
//! query parameters, the success response and the error responses of each operation.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, Paths, Ref, RefOr, Required, ResponseBuilder,
    Schema, Type,
};

use utoipa::openapi::security::SecurityRequirement;

use super::operations::Output::{Json, Text};

/// The name of the bearer-token security scheme in the document's components.
pub(super) const BEARER: &str = "bearer";
use super::operations::{Input, OPERATIONS};

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "invalid_argument: the message names the field and the rule",
        401 => "unauthorized (auth on): the bearer token is missing, malformed or unknown; WWW-Authenticate is set",
        403 => "forbidden (auth on): the principal's role, key prefixes or lease ownership do not allow this",
        404 => "lease_not_found, name_not_found or not_found",
        409 => "lock_held / name_taken (with holder), not_owner, semaphore_full, limit_mismatch",
        413 => "payload_too_large: body, key or value over the limits",
        429 => "too_many_requests: over a configured quota",
        503 => "unavailable: no leader or no quorum; Retry-After is set",
        504 => "timeout: the request's own deadline passed",
        _ => "",
    }
}

fn component(name: &str) -> RefOr<Schema> {
    if name == "Object" {
        RefOr::T(Schema::Object(
            ObjectBuilder::new().schema_type(Type::Object).build(),
        ))
    } else {
        RefOr::Ref(Ref::from_schema_name(name))
    }
}

fn method(name: &str) -> HttpMethod {
    match name {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        other => unreachable!("no operation uses {other}"),
    }
}

/// Every documented operation; `auth`: the node requires bearer tokens (`[auth]`), so every
/// `/v1` operation states the security requirement and can answer 401 and 403.
pub(super) fn paths(auth: bool) -> Paths {
    let mut paths = Paths::new();
    for o in OPERATIONS {
        let mut b = OperationBuilder::new().summary(Some(o.summary));
        for param in ["key", "name", "id"] {
            if o.path.contains(&format!("{{{param}}}")) {
                let (schema_type, description) = if param == "id" {
                    (Type::Integer, "a lease or member id")
                } else {
                    (
                        Type::String,
                        "may contain '/'; may not end in /extend, /wait or /history",
                    )
                };
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(param)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .description(Some(description))
                        .schema(Some(ObjectBuilder::new().schema_type(schema_type))),
                );
            }
        }
        match o.input {
            Input::None => {}
            Input::Body(schema) => {
                b = b.request_body(Some(
                    RequestBodyBuilder::new()
                        .required(Some(Required::True))
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(component(schema)))
                                .build(),
                        )
                        .build(),
                ));
            }
            Input::Query(kind) => b = b.parameters(Some(kind.parameters())),
        }
        let ok = match o.output {
            Json(schema) => ResponseBuilder::new()
                .description(reason(o.status))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(component(schema)))
                        .build(),
                ),
            Text(content_type) => ResponseBuilder::new()
                .description(reason(o.status))
                .content(
                    content_type,
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                ),
        };
        let ok = if o.path.starts_with("/v1/") && o.method == "GET" {
            ok.header(
                "X-Leasehold-Index",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some(
                        "the modify index of what was read, for blocking queries",
                    ))
                    .build(),
            )
        } else {
            ok
        };
        b = b.response(o.status.to_string(), ok.build());
        let mut errors = Vec::new();
        if o.path.starts_with("/v1/") {
            errors.push(400);
            if auth {
                // With auth on, every /v1 operation needs a bearer token.
                errors.extend([401, 403]);
                b = b.security(SecurityRequirement::new(BEARER, Vec::<String>::new()));
            }
        }
        errors.extend_from_slice(o.errors);
        if o.path.starts_with("/v1/") {
            errors.extend([503, 504]);
        }
        for status in errors {
            b = b.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(reason(status))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(component("ErrorBody")))
                            .build(),
                    )
                    .build(),
            );
        }
        paths.add_path_operation(o.path, vec![method(o.method)], b.build());
    }
    paths
}

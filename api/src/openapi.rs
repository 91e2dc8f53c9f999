//! The OpenAPI 3.1 document of the REST API, served at `GET /openapi.json`.
//!
//! It is generated from the code, so that it cannot drift from it: every route is added to
//! the router through `utoipa_axum`'s `routes!`, which takes the path, the method, the
//! parameters, the body and the answers from the handler's `#[utoipa::path]` annotation
//! and routes the same path to the same handler. A route cannot be served without being
//! described, and a description cannot name a route that is not served.
//!
//! What every route shares is added here once rather than repeated on ~180 annotations:
//!
//! - the `{org}`, `{app}` and other path segments as string parameters, where an
//!   annotation does not describe them itself;
//! - the platform's envelope ([`Envelope`]) around every JSON answer of the API, as
//!   `envelope::wrap` adds it (except the bare answer of `POST /{org}/{app}/token`);
//! - a `default` answer in the platform's error envelope ([`ErrorBody`]): every route may
//!   answer 400, 401, 403, 404, 408, 413, 429 or 503 for the reasons `docs/api.md` lists;
//! - the bearer token, required unless the annotation says `security(())` (optional);
//! - an `operationId` made of the method and the path, unique by construction.
//!
//! `tests/openapi.rs` runs schemathesis against a live chatd with this document.

use std::sync::Arc;

use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::openapi::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this server", body = Object)))]
async fn openapi_json(Extension(document): Extension<Arc<Value>>) -> Json<Value> {
    Json(Value::clone(&document))
}

/// The platform's envelope, around every JSON answer of the API (`envelope::wrap`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct Envelope {
    /// The request's method (`get`, `post`, …), or the name of the operation.
    action: String,
    /// The app's id, once the caller's token or the token route has found the app.
    application: Option<String>,
    /// The route below `/{org}/{app}`.
    path: String,
    /// The request's URL under `api.public_url`.
    uri: String,
    /// The query string's parameters, each a list of values.
    params: Option<Map<String, Value>>,
    /// When the answer was made, in milliseconds since 1970.
    timestamp: i64,
    /// Milliseconds spent on the request.
    duration: i64,
    organization: String,
    #[serde(rename = "applicationName")]
    application_name: String,
}

/// Every error, in the platform's error envelope (`error.rs`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    /// The platform's code: `illegal_argument`, `unauthorized`, `forbidden_op`,
    /// `service_resource_not_found`, `reach_limit`, …
    error: String,
    /// The platform's exception class name for the code.
    exception: String,
    timestamp: i64,
    duration: i64,
    /// What was wrong, naming the field or the limit.
    error_description: String,
}

/// `data.result`: true when done (the platform's plain success answer).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Done {
    data: DoneData,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DoneData {
    result: bool,
}

/// The document's fixed parts: what it is, how to authenticate, the shared schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "chatd REST API",
        description = "The REST API of chatd, in the resource model and envelope of the Agora Chat \
                       (Easemob) platform API. Every route is below /{org}/{app}. See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Envelope, ErrorBody))
)]
struct Base;

/// The routes described by `routes` (from the router), completed with what every route
/// shares (see the module docs), as the JSON served at `/openapi.json`.
pub(crate) fn document(routes: OpenApi) -> Value {
    use utoipa::OpenApi as _;
    let mut doc = Base::openapi().merge_from(routes);
    doc.openapi = utoipa::openapi::OpenApiVersion::Version31;
    let mut doc = serde_json::to_value(doc).expect("an OpenAPI document serializes");
    doc["openapi"] = json!("3.1.0");
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An app token (client credentials) or a user token, from POST /{org}/{app}/token"
        }
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, operation) in item.iter_mut() {
                complete(path, method, operation);
            }
        }
    }
    doc
}

fn complete(path: &str, method: &str, operation: &mut Value) {
    operation["operationId"] = json!(operation_id(method, path));
    // Path parameters the annotation did not describe: strings.
    let declared: Vec<String> = operation["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut added = Vec::new();
    for name in path_params(path) {
        if !declared.contains(&name) {
            added.push(json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": param_description(&name),
                "schema": {"type": "string", "minLength": 1},
            }));
        }
    }
    if !added.is_empty() {
        let params = operation["parameters"].as_array().cloned().unwrap_or_default();
        added.extend(params);
        operation["parameters"] = Value::Array(added);
    }
    // The envelope around JSON answers (the token route answers bare, as on the platform).
    let bare = path == "/{org}/{app}/token" || !path.starts_with("/{org}/{app}/");
    if let Some(responses) = operation["responses"].as_object_mut() {
        for (status, response) in responses.iter_mut() {
            let ok = status.starts_with('2');
            let Some(schema) = response.pointer_mut("/content/application~1json/schema") else {
                continue;
            };
            if ok && !bare {
                let inner = schema.take();
                *schema = json!({"allOf": [{"$ref": "#/components/schemas/Envelope"}, inner]});
            }
        }
        responses.entry("default").or_insert_with(|| {
            json!({
                "description": "An error, in the platform's error envelope",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
            })
        });
    }
    if operation.get("security").is_none() {
        operation["security"] = json!([{"bearer": []}]);
    }
}

/// `get /{org}/{app}/users/{username}` → `get_users_username`.
fn operation_id(method: &str, path: &str) -> String {
    let rest = path.strip_prefix("/{org}/{app}").unwrap_or(path);
    let mut id = method.to_string();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(segment.chars().filter(|c| *c != '{' && *c != '}').map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    id
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(String::from)
        .collect()
}

fn param_description(name: &str) -> &'static str {
    match name {
        "org" => "The organization's name",
        "app" => "The app's name",
        "username" => "A user's name (compared in lower case)",
        "id" => "The resource's id",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation answers something documented, has a unique id and a tag. The
    /// document is written to `$TMPDIR/chatd-openapi.json` for reading.
    #[test]
    fn the_document_describes_every_route() {
        let doc = crate::openapi_document();
        let out = std::env::temp_dir().join("chatd-openapi.json");
        std::fs::write(&out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let mut ids = std::collections::HashSet::new();
        let mut count = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                count += 1;
                let id = op["operationId"].as_str().unwrap().to_string();
                assert!(ids.insert(id.clone()), "{id} twice");
                assert!(
                    op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                    "{method} {path}: no tag"
                );
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|k| k.starts_with('2')),
                    "{method} {path}: no success answer"
                );
                for name in path_params(path) {
                    assert!(
                        op["parameters"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["name"] == name.as_str()),
                        "{method} {path}: {name} undescribed"
                    );
                }
            }
        }
        eprintln!("{count} operations; written to {}", out.display());
    }

    /// Schemas are named after their Rust type, without its module: two answer types of the
    /// same name in two modules would silently become one in the document.
    #[test]
    fn no_two_schemas_share_a_name() {
        let mut seen: std::collections::HashMap<String, Value> = Default::default();
        for module in crate::api_modules().into_iter().chain(crate::outside_modules()) {
            let doc = serde_json::to_value(module.into_openapi()).unwrap();
            for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
                if let Some(earlier) = seen.insert(name.clone(), schema.clone()) {
                    assert_eq!(&earlier, schema, "two schemas named {name}: rename one");
                }
            }
        }
    }

    /// Every route is added through `routes!`, which describes it: a plain axum route
    /// would serve a path the document does not show. The web app's files are not API.
    #[test]
    fn no_route_is_added_without_its_description() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut offenders = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("web.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if text.contains(&[".", "route("].concat()) {
                    offenders.push(path.display().to_string());
                }
            }
        }
        assert!(offenders.is_empty(), "undescribed routes in {offenders:?}");
    }

    /// The documented message types are the ones devices and the API accept: the schema
    /// is written out by hand (the store crate does not describe itself), so a type added
    /// to `MsgType` must reach it. The match stops compiling when a variant is added.
    #[test]
    fn the_documented_message_types_are_the_accepted_ones() {
        use store::envelope::MsgType::{self, *};
        let all = [Txt, Img, Audio, Video, File, Loc, Cmd, Custom];
        for kind in all {
            match kind {
                Txt | Img | Audio | Video | File | Loc | Cmd | Custom => {}
            }
        }
        let accepted: Vec<Value> = all.iter().map(|k: &MsgType| serde_json::to_value(k).unwrap()).collect();
        let doc = crate::openapi_document();
        let documented = doc["components"]["schemas"]["MessageKind"]["enum"].as_array().unwrap();
        assert_eq!(documented, &accepted);
    }

    #[test]
    fn operation_ids_come_from_the_method_and_the_path() {
        assert_eq!(
            operation_id("get", "/{org}/{app}/users/{username}"),
            "get_users_username"
        );
        assert_eq!(operation_id("post", "/{org}/{app}/token"), "post_token");
        assert_eq!(operation_id("get", "/health/ready"), "get_health_ready");
    }

    #[test]
    fn every_path_segment_in_braces_is_a_parameter() {
        assert_eq!(path_params("/{org}/{app}/users/{username}"), ["org", "app", "username"]);
    }
}

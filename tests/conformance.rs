//! The REST API against the platform's own documentation: the request/response pairs of the
//! Agora Chat (Easemob) REST reference, transcribed as data in `tests/conformance/*.json`
//! (see its README), replayed against a live chatd. Each file runs top to bottom in an app
//! of its own; every answer must have the documented status and every key the documented
//! example has, with a value of the same JSON type (values themselves — ids, timestamps,
//! URLs — are not compared; keys chatd adds are allowed).
//!
//! Cases of routes chatd does not implement are listed, with the reason, in
//! `tests/conformance/unsupported.json` (`cases`); the runner skips exactly those, fails if
//! the list names a case that does not exist, and fails if such a case would in fact pass
//! (then it belongs in the suite). Every route the documentation names
//! (`tests/conformance/routes.json`) must be routed by chatd or listed, with the reason, in
//! `unsupported.json` (`routes`) and in docs/api.md's table of routes not implemented.

mod common;

use std::collections::HashMap;

use common::{Backend, TestApp};
use serde_json::{Map, Value};

const FILES: &[&str] = &[
    "token",
    "users",
    "user_status",
    "metadata",
    "contacts",
    "messages",
    "chatfiles",
    "chatgroups",
    "chatrooms",
    "push",
    "mute",
    "reactions",
    "presence",
    "chatroom_attributes",
    "notifications",
];

fn load(name: &str) -> Value {
    let path = format!("{}/tests/conformance/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `{{name}}` replaced by its value, in a string.
fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

/// `{{name}}` replaced everywhere in a JSON value, keys included.
fn substitute_json(value: &Value, vars: &HashMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(substitute(s, vars)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute_json(v, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (substitute(k, vars), substitute_json(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The value at a dotted path (`data.groupid`, `entities.0.uuid`).
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Array(items) => items.get(key.parse::<usize>().ok()?),
        Value::Object(map) => map.get(key),
        _ => None,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `actual` has the shape of `expected`: every key of an expected object present
/// with a value of the same shape; every element of an actual array shaped like one of the
/// expected elements (lengths are the data's, not the shape's); scalars of the same type.
/// A documented `null` accepts anything. Differences are pushed to `problems`.
fn same_shape(expected: &Value, actual: &Value, path: &str, problems: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Null, _) => {}
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                let here = format!("{path}.{key}");
                match got.get(key) {
                    Some(v) => same_shape(value, v, &here, problems),
                    None => problems.push(format!("{here}: missing")),
                }
            }
        }
        (Value::Array(want), Value::Array(got)) => {
            if want.is_empty() {
                return;
            }
            for (i, item) in got.iter().enumerate() {
                let mut best: Option<Vec<String>> = None;
                for candidate in want {
                    let mut p = Vec::new();
                    same_shape(candidate, item, &format!("{path}[{i}]"), &mut p);
                    if best.as_ref().is_none_or(|b| p.len() < b.len()) {
                        best = Some(p);
                    }
                }
                problems.extend(best.unwrap_or_default());
            }
        }
        (w, g) if kind(w) == kind(g) => {}
        (w, g) => problems.push(format!("{path}: {} expected, got {} ({g})", kind(w), kind(g))),
    }
}

/// Sends one case's request; answers the status and the body (JSON, or `null`).
async fn send(t: &TestApp, case: &Value, vars: &HashMap<String, String>) -> (u16, Value) {
    let req = substitute_json(&case["request"], vars);
    let method = reqwest::Method::from_bytes(req["method"].as_str().unwrap().as_bytes()).unwrap();
    let mut url = t.url(req["path"].as_str().unwrap());
    if let Some(query) = req["query"].as_str() {
        url = format!("{url}?{query}");
    }
    let mut builder = t.http.request(method, url);
    let auth = req["auth"].as_str().unwrap_or("app");
    match auth {
        "app" => builder = builder.bearer_auth(&t.app_token),
        "none" => {}
        other => {
            let user = other.strip_prefix("user:").expect("auth is app, none or user:<name>");
            builder = builder.bearer_auth(vars.get(&format!("token:{user}")).expect("a token for that user"));
        }
    }
    if let Some(headers) = req["headers"].as_object() {
        for (name, value) in headers {
            builder = builder.header(name, value.as_str().unwrap());
        }
    }
    let content_type = req["content_type"].as_str().unwrap_or("application/json");
    if let Some(parts) = req["multipart"].as_object() {
        let mut form = reqwest::multipart::Form::new();
        for (name, part) in parts {
            let file = reqwest::multipart::Part::bytes(part["content"].as_str().unwrap().as_bytes().to_vec())
                .file_name(part["filename"].as_str().unwrap().to_string())
                .mime_str(part["content_type"].as_str().unwrap())
                .unwrap();
            form = form.part(name.clone(), file);
        }
        builder = builder.multipart(form);
    } else if let Some(body) = req.get("body") {
        let text = match body {
            Value::String(form) if content_type != "application/json" => form.clone(),
            json => json.to_string(),
        };
        builder = builder.header("content-type", content_type).body(text);
    }
    let resp = builder.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// What a migrated app sets up through chatd's own routes before its backend runs: the
/// docs' messages point at files on the platform's servers, so the app allows external
/// URLs; the docs bind devices with an FCM credential named `104410638`, so the app's push
/// config names its FCM credential that way.
async fn set_up(t: &TestApp, file: &str) {
    let (status, body) = t
        .put(
            "/settings",
            &t.app_token,
            serde_json::json!({"allow_external_urls": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    if file == "push" {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(made.success());
        let config = serde_json::json!({"fcm": {
            "service_account": {
                "project_id": "demo-proj",
                "client_email": "push@demo-proj.iam.gserviceaccount.com",
                "private_key": std::fs::read_to_string(&key).unwrap(),
            },
            "notifier_name": "104410638",
        }});
        let (status, body) = t.put("/push/config", &t.app_token, config).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Replays one file; answers what failed and which unsupported cases passed anyway.
async fn replay(t: &TestApp, file: &str, unsupported: &Map<String, Value>) -> (Vec<String>, usize, usize) {
    set_up(t, file).await;
    let mut vars: HashMap<String, String> = HashMap::from([
        ("client_id".into(), t.client_id.clone()),
        ("client_secret".into(), t.client_secret.clone()),
        ("org".into(), t.org.clone()),
        ("app".into(), t.app.clone()),
    ]);
    let mut failures = Vec::new();
    let (mut passed, mut skipped) = (0, 0);
    for case in load(file).as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let key = format!("{file}: {name}");
        let skip = unsupported.contains_key(&key);
        let (status, body) = send(t, case, &vars).await;
        let want_status = case["response"]["status"].as_u64().unwrap() as u16;
        let mut problems = Vec::new();
        if status != want_status {
            problems.push(format!("status {status}, documented {want_status}"));
        }
        if let Some(want) = case["response"].get("body") {
            same_shape(&substitute_json(want, &vars), &body, "body", &mut problems);
        }
        if let Some(captures) = case["capture"].as_object() {
            for (var, path) in captures {
                match at(&body, path.as_str().unwrap()) {
                    Some(Value::String(s)) => {
                        vars.insert(var.clone(), s.clone());
                    }
                    Some(other) => {
                        vars.insert(var.clone(), other.to_string());
                    }
                    None if !skip => problems.push(format!("capture {var}: nothing at {path}")),
                    None => {}
                }
            }
        }
        match (skip, problems.is_empty()) {
            (false, true) => passed += 1,
            (false, false) => failures.push(format!("{key}\n    {}\n    answer: {body}", problems.join("\n    "))),
            (true, false) => skipped += 1,
            (true, true) => failures.push(format!(
                "{key}: listed in unsupported.json, but chatd answers it as documented; take it off the list"
            )),
        }
    }
    (failures, passed, skipped)
}

async fn conformance(backend: Backend) {
    let unsupported = load("unsupported");
    let unsupported = unsupported["cases"].as_object().unwrap();
    // Every entry names a real case.
    let names: Vec<String> = FILES
        .iter()
        .flat_map(|f| {
            load(f)
                .as_array()
                .unwrap()
                .iter()
                .map(|c| format!("{f}: {}", c["name"].as_str().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    for listed in unsupported.keys() {
        assert!(names.contains(listed), "unsupported.json names no case: {listed}");
    }
    let (mut failures, mut passed, mut skipped) = (Vec::new(), 0, 0);
    for file in FILES {
        // A server per file: each file's cases start from an empty app.
        let t = common::spawn_app(backend).await;
        let (f, p, s) = replay(&t, file, unsupported).await;
        failures.extend(f);
        passed += p;
        skipped += s;
    }
    println!("conformance: {passed} cases as documented, {skipped} unsupported (listed)");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from the documentation:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}

/// Every route the platform documents is routed by chatd (whatever it answers to made-up
/// ids, it is not "no such route" and not 405), or listed as not implemented, in
/// `unsupported.json` and in docs/api.md; never both.
#[tokio::test]
async fn documented_routes_are_routed_or_listed() {
    let t = common::spawn_app(Backend::Sqlite).await;
    let listed = load("unsupported");
    let listed = listed["routes"].as_object().unwrap();
    let docs = std::fs::read_to_string(format!("{}/docs/api.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let table = docs
        .split("## Routes of the platform chatd does not implement")
        .nth(1)
        .expect("docs/api.md has its table of routes not implemented");
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for route in load("routes").as_array().unwrap() {
        let (method, path) = (route["method"].as_str().unwrap(), route["path"].as_str().unwrap());
        let key = format!("{method} {path}");
        if !seen.insert(key.clone()) {
            continue;
        }
        // Every `{name}` becomes a made-up id.
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let resp = t
            .http
            .request(method.parse().unwrap(), t.url(&concrete))
            .bearer_auth(&t.app_token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let routed = status != 405 && !(status == 404 && body["error_description"] == "no such route");
        match (routed, listed.get(&key)) {
            (true, Some(_)) => problems.push(format!("{key}: routed, but listed as not implemented")),
            (false, None) => problems.push(format!("{key}: not routed ({status} {body}) and not listed")),
            (false, Some(_)) if !table.contains(&format!("`{key}`")) => {
                problems.push(format!("{key}: not in docs/api.md's table of routes not implemented"))
            }
            _ => {}
        }
    }
    for key in listed.keys() {
        assert!(
            seen.contains(key),
            "unsupported.json lists a route the documentation does not name: {key}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn documented_examples_sqlite() {
    conformance(Backend::Sqlite).await;
}

#[tokio::test]
async fn documented_examples_postgres() {
    conformance(Backend::Postgres).await;
}

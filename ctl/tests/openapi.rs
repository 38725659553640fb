//! `ctl/openapi.json` against the server: the documented (method, path) pairs are exactly
//! the router's, every one of them is served (not the 404/405 fallbacks), documented examples
//! match their schemas, and real answers match the documented schemas.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{app, create_body, json, TestResult};

fn doc() -> Result<Value, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// Follows a local `$ref` ("#/a/b").
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    let mut v = v;
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let mut cur = doc;
        for part in r.trim_start_matches("#/").split('/') {
            cur = &cur[part];
        }
        v = cur;
    }
    v
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => false,
    }
}

/// A small JSON-schema check: type (or list of types), enum, required, properties, items,
/// oneOf, additionalProperties: false. Errors name the path.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let fits = alts.iter().filter(|s| check(doc, s, v, at).is_ok()).count();
        return if fits == 1 {
            Ok(())
        } else {
            Err(format!("{at}: fits {fits} of oneOf"))
        };
    }
    match schema.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => return Err(format!("{at}: not {t}: {v}")),
        Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)) => {
            return Err(format!("{at}: none of {ts:?}: {v}"))
        }
        _ => {}
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let k = r.as_str().unwrap_or("");
            if !obj.contains_key(k) {
                return Err(format!("{at}: missing required {k}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, val, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: undocumented field {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (m, _) in item.as_object().into_iter().flatten() {
            if ["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn documented_routes_are_the_routers() -> TestResult {
    let doc = doc()?;
    let served: BTreeSet<(String, String)> = ctl::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented_routes(&doc), served);
    Ok(())
}

#[tokio::test]
async fn every_documented_route_is_served() -> TestResult {
    let doc = doc()?;
    let a = app()?;
    for (m, p) in documented_routes(&doc) {
        let path = p.replace("{id}", "no-such-session");
        let body = if m == "POST" && p == "/v1/sessions" {
            "{"
        } else {
            ""
        };
        let (status, v) = json(&a, &m, &path, body).await?;
        assert_ne!(status, 405, "{m} {p}: {v}");
        let err = v["error"].as_str().unwrap_or("");
        assert!(
            !err.starts_with("no route"),
            "{m} {p} fell through to the fallback: {v}"
        );
        // Every answer the test provoked is documented for that operation.
        let responses = &doc["paths"][&p][m.to_lowercase()]["responses"];
        assert!(
            responses.get(status.to_string()).is_some(),
            "{m} {p}: answer {status} is not documented"
        );
        // A method the document does not list for this path is refused.
        for other in ["GET", "POST", "DELETE", "PUT", "PATCH"] {
            if doc["paths"][&p].get(other.to_lowercase()).is_none() {
                let (status, _) = json(&a, other, &path, "").await?;
                assert_eq!(status, 405, "{other} {p}");
            }
        }
    }
    Ok(())
}

/// Every example in the document fits its schema, and session examples deserialize into
/// the server's own type.
#[test]
fn examples_fit_their_schemas() -> TestResult {
    let doc = doc()?;
    let mut checked = 0;
    let mut responses = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (m, op) in item.as_object().into_iter().flatten() {
            for (code, r) in op["responses"].as_object().into_iter().flatten() {
                responses.push((format!("{m} {path} {code}"), resolve(&doc, r).clone()));
            }
            if let Some(rb) = op.get("requestBody") {
                responses.push((format!("{m} {path} request"), rb.clone()));
            }
        }
    }
    for (what, r) in responses {
        // Text answers (Prometheus metrics) need a string example.
        if let Some(text) = r["content"].get("text/plain") {
            assert!(text["example"].is_string(), "{what}: no text example");
            checked += 1;
            continue;
        }
        let media = &r["content"]["application/json"];
        let schema = &media["schema"];
        let mut examples: Vec<Value> = media.get("example").cloned().into_iter().collect();
        for (_, e) in media["examples"].as_object().into_iter().flatten() {
            examples.push(resolve(&doc, e)["value"].clone());
        }
        assert!(!examples.is_empty(), "{what}: no example");
        for e in examples {
            check(&doc, schema, &e, &what)?;
            if resolve(&doc, schema) == resolve(&doc, &doc["components"]["schemas"]["Session"]) {
                serde_json::from_value::<ctl::session::Session>(e)
                    .map_err(|err| format!("{what}: {err}"))?;
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked}");
    Ok(())
}

/// What the server really answers fits the documented schemas.
#[tokio::test]
async fn real_answers_fit_the_schemas() -> TestResult {
    let doc = doc()?;
    let schemas = &doc["components"]["schemas"];
    let a = app()?;
    let target = a.dir.path().join("t").display().to_string();
    let (status, s) = json(&a, "POST", "/v1/sessions", &create_body(&target)).await?;
    assert_eq!(status, 201);
    check(&doc, &schemas["Session"], &s, "create")?;
    let id = s["id"].as_str().ok_or("no id")?.to_string();
    let (_, v) = json(&a, "GET", "/v1/sessions", "").await?;
    check(&doc, &schemas["SessionList"], &v, "list")?;
    let (_, v) = json(&a, "GET", &format!("/v1/sessions/{id}"), "").await?;
    check(&doc, &schemas["Session"], &v, "get")?;
    let (status, v) = json(&a, "GET", "/metrics", "").await?;
    assert_eq!(status, 200);
    let text = v.as_str().ok_or("metrics are not text")?;
    assert!(
        text.contains("# TYPE ferry_control_sessions gauge\n")
            && text.contains("ferry_control_sessions{state=\"created\"} 1\n"),
        "{text}"
    );
    let (status, v) = json(&a, "GET", &format!("/v1/sessions/{id}/map?cells=8"), "").await?;
    assert_eq!(status, 409, "no map before start: {v}");
    check(&doc, &schemas["Error"], &v, "map 409")?;
    let (status, _) = json(&a, "GET", &format!("/v1/sessions/{id}/map?cells=x"), "").await?;
    assert_eq!(status, 400);
    let (status, v) = json(&a, "POST", &format!("/v1/sessions/{id}/cutover"), "").await?;
    assert_eq!(status, 409);
    check(&doc, &schemas["Error"], &v, "409")?;
    let (_, v) = json(&a, "POST", &format!("/v1/sessions/{id}/abort"), "").await?;
    check(&doc, &schemas["Session"], &v, "abort")?;
    let (_, v) = json(&a, "DELETE", &format!("/v1/sessions/{id}"), "").await?;
    check(&doc, &schemas["Deleted"], &v, "delete")?;
    let (_, v) = json(&a, "GET", "/v1/health", "").await?;
    check(&doc, &schemas["Health"], &v, "health")?;
    // The request example is accepted by the server's own request type.
    let ex = doc["paths"]["/v1/sessions"]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .clone();
    serde_json::from_value::<ctl::session::CreateRequest>(ex)?;
    Ok(())
}

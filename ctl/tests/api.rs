//! The API without frontends: validation, errors as JSON 4xx, transitions of sessions that
//! never start, idempotence.

mod support;

use support::{app, create_body, json, send, TestResult};

#[tokio::test]
async fn malformed_and_wrong_types_are_4xx_json() -> TestResult {
    let a = app()?;
    let target = a.dir.path().join("t").display().to_string();
    let cases: Vec<(Option<&str>, String, u16)> = vec![
        (Some("application/json"), "{".into(), 400),
        (Some("application/json"), "not json at all".into(), 400),
        (Some("application/json"), "".into(), 400),
        (Some("application/json"), "[1,2,3]".into(), 422),
        (Some("application/json"), "null".into(), 422),
        (
            Some("application/json"),
            r#"{"backend": 5, "volume": "v", "target": "/t"}"#.into(),
            422,
        ),
        (
            Some("application/json"),
            r#"{"volume": "v", "target": "/t"}"#.into(),
            422,
        ),
        (
            Some("application/json"),
            format!(
                r#"{{"backend":"h:1","volume":"v","target":"{target}","chunk_size_bytes":"64K"}}"#
            ),
            422,
        ),
        (
            Some("application/json"),
            format!(
                r#"{{"backend":"h:1","volume":"v","target":"{target}","chunk_size_bytes":-1}}"#
            ),
            422,
        ),
        (
            Some("application/json"),
            format!(
                r#"{{"backend":"h:1","volume":"v","target":"{target}","chunk_size_bytes":99999999999}}"#
            ),
            422,
        ),
        (
            Some("application/json"),
            format!(
                r#"{{"backend":"h:1","volume":"v","target":"{target}","chunk_size_bytes":3000}}"#
            ),
            422,
        ),
        (
            Some("application/json"),
            format!(r#"{{"backend":"h:1","volume":"v","target":"{target}","dedup":"yes"}}"#),
            422,
        ),
        (
            Some("application/json"),
            format!(r#"{{"backend":"h:1","volume":"v","target":"{target}","compress":"brotli"}}"#),
            422,
        ),
        (
            Some("application/json"),
            format!(r#"{{"backend":"h:1","volume":"v","target":"{target}","typo_field":1}}"#),
            422,
        ),
        (
            Some("application/json"),
            r#"{"backend":"h:1","volume":"v","target":"relative/t"}"#.into(),
            422,
        ),
        (Some("text/plain"), create_body(&target), 415),
        (None, create_body(&target), 415),
    ];
    for (ct, body, want) in cases {
        let (status, v) = send(&a, "POST", "/v1/sessions", ct, &body).await?;
        assert_eq!(status, want, "{body}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {v}"
        );
    }
    // Random bytes never crash the server nor answer 5xx.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let len = (seed % 64) as usize;
        let mut body = String::new();
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            body.push(b"{}[]\":,0123456789abcdefnulltrue -.eE\\"[(seed % 37) as usize] as char);
        }
        let (status, _) = json(&a, "POST", "/v1/sessions", &body).await?;
        assert!((400..500).contains(&status), "{body:?} answered {status}");
    }
    let (status, v) = json(&a, "GET", "/v1/sessions", "").await?;
    assert_eq!(
        (status, v["sessions"].as_array().map(|s| s.len())),
        (200, Some(0))
    );
    Ok(())
}

#[tokio::test]
async fn transitions_of_a_created_session() -> TestResult {
    let a = app()?;
    let target = a.dir.path().join("t").display().to_string();
    let (status, s) = json(&a, "POST", "/v1/sessions", &create_body(&target)).await?;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["state"], "created");
    assert_eq!(s["name"], "v");
    let id = s["id"].as_str().ok_or("no id")?.to_string();
    let p = |action: &str| format!("/v1/sessions/{id}/{action}");

    // A second session into the same target is refused while this one is not final.
    let (status, v) = json(&a, "POST", "/v1/sessions", &create_body(&target)).await?;
    assert_eq!(status, 409, "{v}");

    for action in ["pause", "resume", "cutover"] {
        let (status, v) = json(&a, "POST", &p(action), "").await?;
        assert_eq!(status, 409, "{action}: {v}");
        let e = v["error"].as_str().unwrap_or("");
        assert!(
            e.contains("created") && e.contains("start"),
            "{action}: {e}"
        );
        assert_eq!(v["state"], "created");
    }
    let (status, v) = json(&a, "GET", &format!("/v1/sessions/{id}"), "").await?;
    assert_eq!((status, v["state"].as_str()), (200, Some("created")));

    let (status, v) = json(&a, "POST", &p("abort"), "").await?;
    assert_eq!((status, v["state"].as_str()), (200, Some("aborted")), "{v}");
    // Idempotent: again is a success that changes nothing.
    let (status, v) = json(&a, "POST", &p("abort"), "").await?;
    assert_eq!((status, v["state"].as_str()), (200, Some("aborted")), "{v}");
    for action in ["start", "pause", "resume", "cutover"] {
        let (status, v) = json(&a, "POST", &p(action), "").await?;
        assert_eq!(status, 409, "{action}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains("aborted"), "{v}");
    }
    let (status, v) = json(&a, "DELETE", &format!("/v1/sessions/{id}"), "").await?;
    assert_eq!((status, v["deleted"].as_bool()), (200, Some(true)), "{v}");
    let (status, v) = json(&a, "DELETE", &format!("/v1/sessions/{id}"), "").await?;
    assert_eq!(status, 404, "{v}");
    let (status, v) = json(&a, "POST", &p("start"), "").await?;
    assert_eq!(status, 404, "{v}");
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() -> TestResult {
    let a = app()?;
    let (status, v) = json(&a, "GET", "/nope", "").await?;
    assert_eq!(status, 404);
    assert!(v["error"].is_string());
    let (status, v) = json(&a, "PUT", "/v1/sessions", "").await?;
    assert_eq!(status, 405);
    assert!(v["error"].is_string());
    let (status, v) = json(&a, "POST", "/v1/sessions/x/explode", "").await?;
    assert_eq!(status, 404);
    assert!(v["error"].is_string());
    Ok(())
}

//! The OpenAPI document generated from the code is the one checked in as `docs/openapi.json`.
//!
//! After changing a route, regenerate the file with
//! `MNEMO_BLESS_OPENAPI=1 cargo test -p mnemo-api --test openapi` and review the diff.

use std::path::PathBuf;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let generated = mnemo_api::openapi_json_text();
    let path = checked_in();
    if std::env::var_os("MNEMO_BLESS_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let file = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        file == generated,
        "docs/openapi.json differs from the document the code generates; regenerate it with \
         MNEMO_BLESS_OPENAPI=1 cargo test -p mnemo-api --test openapi and review the diff"
    );
}

#[test]
fn every_operation_is_named_and_answers_errors_in_one_shape() {
    let doc: serde_json::Value = serde_json::from_str(&mnemo_api::openapi_json_text()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let at = format!("{method} {path}");
            assert!(op["operationId"].is_string(), "{at}: no operationId");
            assert!(op["summary"].is_string(), "{at}: no summary");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{at}: no success answer"
            );
            if path.starts_with("/v1/") {
                for status in ["400", "401", "403", "404", "503"] {
                    let schema = &responses[status]["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorResponse",
                        "{at}: {status}"
                    );
                }
            }
        }
    }
    // Conversations 8, memory 8 (the key `batch` has its own path), search/SQL/changes 4, administration 7, operations 3.
    assert_eq!(operations, 30);
}

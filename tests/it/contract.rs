//! The published documents agree with the relay: openapi.yaml lists exactly the routes the
//! router serves and exactly the error codes the relay emits.

use std::collections::BTreeSet;

use serde_json::Value;
use stencil_relay::http::{ErrorCode, PATTERNS};

/// openapi.yaml as JSON values.
pub(crate) fn openapi() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("openapi.yaml is valid YAML")
}

/// Every `METHOD /path` the document describes.
pub(crate) fn documented_routes(doc: &Value) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                routes.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    routes
}

#[test]
fn openapi_lists_exactly_the_routes_the_router_serves() {
    let doc = openapi();
    assert_eq!(doc["openapi"].as_str().unwrap(), "3.1.0");
    let served: BTreeSet<String> = PATTERNS.iter().map(|p| (*p).to_owned()).collect();
    assert_eq!(documented_routes(&doc), served);
}

#[test]
fn every_operation_documents_a_success_and_its_errors_use_the_error_schema() {
    let doc = openapi();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap().iter().filter(|(k, _)| *k != "parameters") {
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path} has no responses"));
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path} documents no success");
            for (status, response) in responses.iter().filter(|(s, _)| s.starts_with('4') || s.starts_with('5')) {
                let reference = response["$ref"].as_str().map(str::to_owned);
                let schema = response["content"]["application/json"]["schema"]["$ref"].as_str().map(str::to_owned);
                assert!(
                    reference.is_some_and(|r| r.starts_with("#/components/responses/"))
                        || schema.as_deref() == Some("#/components/schemas/Error"),
                    "{method} {path} {status} is not an Error answer"
                );
            }
        }
    }
}

#[test]
fn openapi_error_codes_are_the_relays() {
    let doc = openapi();
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let emitted: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, emitted);
}

#[test]
fn readme_links_the_openapi_document() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("](openapi.yaml)"));
}

#[test]
fn security_md_cites_only_tests_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let citations: Vec<&str> = doc.split('`').filter(|s| s.contains(".rs::") && !s.contains('<')).collect();
    assert!(citations.len() > 30, "SECURITY.md cites its tests");
    for citation in citations {
        let (file, test) = citation.split_once("::").unwrap();
        let path = if file.starts_with("src/") { root.join(file) } else { root.join("tests/it").join(file) };
        let source =
            std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{citation}: no file {}", path.display()));
        assert!(source.contains(&format!("fn {test}(")), "{citation}: no such test");
    }
}

/// Every relative link in the README and `docs/` names a file of the repository, so a page that
/// moves cannot leave a reader at a dead end.
#[test]
fn docs_link_only_to_files_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("BENCHMARKS.md"), root.join("SECURITY.md")];
    let docs = std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path());
    pages.extend(docs.filter(|p| p.extension().is_some_and(|e| e == "md")));
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let file = target.split('#').next().unwrap();
            if file.is_empty() || file.contains("://") {
                continue;
            }
            let resolved = page.parent().unwrap().join(file);
            assert!(resolved.exists(), "{}: link to {target} names no file", page.display());
        }
    }
}

//! The Make and Zapier app definitions only use what the relay offers: every path and method is
//! a route, every field they send or read is in the contract, and their interfaces and samples
//! are the fixture's.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use stencil_relay::http::PATTERNS;

use crate::contract::openapi;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn json_file(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn fixture() -> Value {
    json_file("fixtures/payloads/legacy-image-created-with-id.json")
}

/// `/v1/hooks/{{webhook.externalHookId}}` or `/v1/hooks/${bundle.subscribeData.id}` → the
/// router's pattern, if the path is one it serves with `method`.
fn served_pattern(method: &str, path: &str) -> Option<&'static str> {
    let normalise = |p: &str| -> String {
        p.split('/')
            .map(|s| {
                if s.contains("{{") || s.contains("${") || (s.starts_with('{') && s.ends_with('}')) { "{}" } else { s }
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let wanted = format!("{method} {}", normalise(path.split('?').next().unwrap()));
    PATTERNS.iter().copied().find(|p| {
        let (m, route) = p.split_once(' ').unwrap();
        format!("{m} {}", normalise(route)) == wanted
    })
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let mut node = doc;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            resolve(doc, node)
        }
        None => v,
    }
}

fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    resolve(doc, schema)["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

/// Properties of the operation's request body and of its success answer.
fn operation_fields(doc: &Value, pattern: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (method, path) = pattern.split_once(' ').unwrap();
    let op = &doc["paths"][path][method.to_lowercase()];
    let request = properties(doc, &op["requestBody"]["content"]["application/json"]["schema"]);
    let success = op["responses"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(s, _)| s.starts_with('2'))
        .flat_map(|(_, r)| properties(doc, &resolve(doc, r)["content"]["application/json"]["schema"]))
        .collect();
    (request, success)
}

/// Every `{{body.X}}` in a Make file.
fn body_references(text: &str) -> BTreeSet<String> {
    text.split("{{body.")
        .skip(1)
        .map(|rest| rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap().to_owned())
        .collect()
}

#[test]
fn make_app_calls_only_routes_and_fields_the_relay_has() {
    let doc = openapi();
    let base = json_file("integrations/make/base.imljson");
    let base_url = base["baseUrl"].as_str().unwrap();
    let error_fields = properties(&doc, &doc["components"]["schemas"]["Error"]);
    let mut used = BTreeSet::new();
    for file in ["connection/communication", "webhook/attach", "webhook/detach"] {
        let path = format!("integrations/make/{file}.imljson");
        let call = json_file(&path);
        let url = call["url"].as_str().unwrap().trim_start_matches(base_url);
        let method = call["method"].as_str().unwrap();
        let pattern =
            served_pattern(method, url).unwrap_or_else(|| panic!("{path}: {method} {url} is not a relay route"));
        used.insert(pattern);
        let (request, success) = operation_fields(&doc, pattern);
        if let Some(body) = call["body"].as_object() {
            for key in body.keys() {
                assert!(request.contains(key), "{path} sends {key}, which {pattern} does not take");
            }
        }
        for field in body_references(&std::fs::read_to_string(Path::new(ROOT).join(&path)).unwrap()) {
            assert!(
                success.contains(&field) || error_fields.contains(&field),
                "{path} reads body.{field}, absent from {pattern}"
            );
        }
    }
    assert_eq!(used, BTreeSet::from(["GET /v1/connection", "POST /v1/hooks", "DELETE /v1/hooks/{id}"]));
    assert!(body_references(&base.to_string()).is_subset(&error_fields));
    let attach = json_file("integrations/make/webhook/attach.imljson");
    assert_eq!(attach["body"]["url"], "{{webhook.url}}");
    assert_eq!(attach["response"]["data"]["externalHookId"], "{{body.id}}");
    assert!(
        json_file("integrations/make/webhook/detach.imljson")["url"]
            .as_str()
            .unwrap()
            .contains("{{webhook.externalHookId}}")
    );
}

#[test]
fn make_trigger_interface_and_sample_are_the_fixture() {
    let fixture = fixture();
    let interface = json_file("integrations/make/modules/watch-images/interface.imljson");
    let names: BTreeSet<&str> = interface.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    let keys: BTreeSet<&str> = fixture.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, keys, "the interface lists exactly the image.created fields");
    let modification_spec = interface.as_array().unwrap().iter().find(|f| f["name"] == "modifications").unwrap();
    let spec: BTreeSet<&str> =
        modification_spec["spec"]["spec"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for entry in fixture["modifications"].as_array().unwrap() {
        for key in entry.as_object().unwrap().keys() {
            assert!(spec.contains(key.as_str()), "modification field {key} is missing from the interface");
        }
    }
    assert_eq!(json_file("integrations/make/modules/watch-images/samples.imljson"), fixture);
    assert_eq!(json_file("integrations/make/modules/watch-images/module.imljson")["type"], "instant_trigger");
}

/// Every `method: 'M', url: `${BASE_URL}/path`` call in a Zapier source file.
fn zapier_calls(source: &str) -> Vec<(String, String)> {
    source
        .split("method: '")
        .skip(1)
        .filter_map(|rest| {
            let (method, rest) = rest.split_once('\'')?;
            let url = rest.split_once("url: `${BASE_URL}")?.1.split_once('`')?.0;
            Some((method.to_owned(), url.to_owned()))
        })
        .collect()
}

#[test]
fn zapier_rest_hook_calls_only_routes_and_fields_the_relay_has() {
    let doc = openapi();
    let read = |f: &str| std::fs::read_to_string(Path::new(ROOT).join("integrations/zapier").join(f)).unwrap();
    let (auth, trigger) = (read("authentication.js"), read("triggers/new_image.js"));
    let mut used = BTreeSet::new();
    for (method, url) in zapier_calls(&auth).into_iter().chain(zapier_calls(&trigger)) {
        used.insert(served_pattern(&method, &url).unwrap_or_else(|| panic!("{method} {url} is not a relay route")));
    }
    assert_eq!(
        used,
        BTreeSet::from(["GET /v1/connection", "POST /v1/hooks", "DELETE /v1/hooks/{id}", "GET /v1/events"])
    );
    let (hook_in, hook_out) = operation_fields(&doc, "POST /v1/hooks");
    let body = trigger.split_once("body: {").unwrap().1.split_once('}').unwrap().0;
    for key in body.split(',').filter_map(|pair| pair.split_once(':')).map(|(k, _)| k.trim()) {
        assert!(hook_in.contains(key), "subscribe sends {key}, which POST /v1/hooks does not take");
    }
    assert!(trigger.contains("bundle.subscribeData.id") && hook_out.contains("id"));
    let event = &doc["components"]["schemas"]["Event"];
    assert!(
        trigger.contains("response.data.data.map((event) => event.payload)")
            && properties(&doc, event).contains("payload")
    );
    assert_eq!(json_file("integrations/zapier/samples/image-created.json"), fixture());
    let fixture = fixture();
    for key in trigger.split("{ key: '").skip(1).filter_map(|r| r.split_once('\'')).map(|(k, _)| k) {
        assert!(key == "template_id" || fixture.get(key).is_some(), "output field {key} is not in the payload");
    }
}

//! The Make and Zapier app definitions only use what the relay offers (every path and method is a
//! route, every field they send or read is in the contract), the Make app is laid out and written
//! as Make's own tooling reads it, and the apps' samples are what Stencil sends.
//!
//! Zapier's own validator and app tester run in `.ci/run` (`integrations/zapier`); the Make
//! Apps Editor's JSON schemas are checked by `integrations/make/validate-with-make-schemas.py`
//! where a checkout of the editor is at hand. What is checked here needs neither.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use stencil_relay::http::PATTERNS;

use crate::contract::openapi;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MAKE: &str = "integrations/make";

fn json_file(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// What Stencil sends (its documented payload).
fn stencil_payload() -> Value {
    json_file("fixtures/payloads/stencil-image-created.json")
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
    let schema = resolve(doc, schema);
    let own = schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    let parts = schema["allOf"].as_array().into_iter().flatten().flat_map(|part| properties(doc, part));
    parts.chain::<BTreeSet<String>>(own).collect()
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

/// Every `{{X.Y…}}` reference's first name (the IML variable) and, for `body`, its field.
fn iml_references(text: &str) -> Vec<(String, Option<String>)> {
    text.split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}").map(|(inside, _)| inside.trim()))
        .map(|inside| {
            let mut parts = inside.split(['.', '[']);
            let variable = parts.next().unwrap_or_default().to_owned();
            let field = parts.next().map(|f| f.trim_end_matches(']').to_owned());
            (variable, field)
        })
        .collect()
}

/// The Make app's manifest and the path of every file it names.
fn make_manifest() -> (Value, Vec<String>) {
    let manifest = json_file(&format!("{MAKE}/makecomapp.json"));
    let mut files: Vec<String> = manifest["generalCodeFiles"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    for kind in manifest["components"].as_object().unwrap().values() {
        for component in kind.as_object().unwrap().values() {
            files.extend(
                component["codeFiles"].as_object().unwrap().values().filter_map(|f| f.as_str().map(str::to_owned)),
            );
        }
    }
    (manifest, files)
}

/// The layout the Make Apps Editor clones an app into and deploys it from: `makecomapp.json` names
/// every code file, general codes under `general/`, each component in `<type>s/<kebab-id>/` with
/// files `<kebab-id>.<code>.iml.json`.
#[test]
fn make_app_is_laid_out_as_the_make_apps_editor_reads_it() {
    let (manifest, files) = make_manifest();
    let keys: BTreeSet<&str> = manifest.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["components", "fileVersion", "generalCodeFiles", "origins"]));
    assert_eq!(manifest["fileVersion"], 1);
    let general: BTreeSet<&str> =
        manifest["generalCodeFiles"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(general, BTreeSet::from(["base", "common", "groups", "readme"]));
    let kinds: BTreeSet<&str> = manifest["components"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(kinds, BTreeSet::from(["connection", "endpoint", "function", "module", "rpc", "webhook"]));
    for origin in manifest["origins"].as_array().unwrap() {
        for key in ["apikeyFile", "appId", "appVersion", "baseUrl"] {
            assert!(origin.get(key).is_some(), "an origin needs {key}");
        }
        assert!(origin["baseUrl"].as_str().unwrap().ends_with("/api"));
    }
    for file in &files {
        assert!(Path::new(ROOT).join(MAKE).join(file).is_file(), "makecomapp.json names {file}, which is missing");
    }
    for (kind, components) in manifest["components"].as_object().unwrap() {
        for (id, component) in components.as_object().unwrap() {
            let kebab: String = id
                .chars()
                .flat_map(|c| if c.is_uppercase() { vec!['-', c.to_ascii_lowercase()] } else { vec![c] })
                .collect();
            for (code, file) in component["codeFiles"].as_object().unwrap() {
                let Some(file) = file.as_str() else { continue };
                assert!(file.starts_with(&format!("{kind}s/{kebab}/{kebab}.")), "{kind} {id}: {code} is at {file}");
                assert!(file.ends_with(".iml.json"), "{file}");
            }
        }
    }
    let module = &manifest["components"]["module"]["watchImages"];
    assert_eq!((module["moduleType"].as_str(), module["webhook"].as_str()), (Some("instant_trigger"), Some("images")));
    assert!(manifest["components"]["webhook"][module["webhook"].as_str().unwrap()].is_object());
    assert_eq!(manifest["components"]["webhook"]["images"]["connection"], "stencilRelay");
}

/// What Make's documentation says each file may hold: the directives of a request, the IML
/// variables each context has, and the error types Make knows.
#[test]
fn make_files_use_only_what_make_documents() {
    const REQUEST_KEYS: &[&str] = &[
        "url",
        "baseUrl",
        "method",
        "headers",
        "qs",
        "body",
        "type",
        "response",
        "log",
        "output",
        "temp",
        "condition",
    ];
    const ERROR_TYPES: &[&str] = &[
        "RuntimeError",
        "DataError",
        "RateLimitError",
        "OutOfSpaceError",
        "ConnectionError",
        "InvalidConfigurationError",
        "InvalidAccessTokenError",
        "IncompleteDataError",
        "DuplicateDataError",
    ];
    let (_, files) = make_manifest();
    for file in files.iter().filter(|f| f.ends_with(".iml.json")) {
        let text = std::fs::read_to_string(Path::new(ROOT).join(MAKE).join(file)).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        // Every IML context has these; what else each has depends on where the file runs.
        let mut variables =
            vec!["parameters", "connection", "common", "data", "now", "temp", "statusCode", "body", "headers"];
        if file.starts_with("webhooks/") {
            variables.push("webhook");
        }
        if file.starts_with("connections/") {
            variables.retain(|v| *v != "connection");
        }
        for (variable, _) in iml_references(&text) {
            assert!(
                variables.contains(&variable.as_str()),
                "{file} uses {{{{{variable}}}}}, which Make does not provide there"
            );
        }
        if let Some(request) = value.as_object().filter(|_| {
            file.contains("communication")
                || file.contains("attach")
                || file.contains("detach")
                || file.starts_with("general/base")
        }) {
            for key in request.keys() {
                assert!(REQUEST_KEYS.contains(&key.as_str()), "{file}: {key} is not a request directive");
            }
            let error = &value["response"]["error"];
            let types = std::iter::once(&error["type"]).chain(
                error
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| k.parse::<u16>().is_ok())
                    .map(|(_, v)| &v["type"]),
            );
            for kind in types.filter_map(Value::as_str) {
                assert!(ERROR_TYPES.contains(&kind), "{file}: {kind} is not a Make error type");
            }
        }
    }
    let base = json_file(&format!("{MAKE}/general/base.iml.json"));
    assert_eq!(base["response"]["error"]["401"]["type"], "InvalidAccessTokenError");
    assert_eq!(base["response"]["error"]["429"]["type"], "RateLimitError");
    let check = json_file(&format!("{MAKE}/connections/stencil-relay/stencil-relay.communication.iml.json"));
    assert_eq!(check["response"]["error"]["401"]["type"], "InvalidAccessTokenError");
    assert!(
        check["url"].as_str().unwrap().starts_with(base["baseUrl"].as_str().unwrap()),
        "the connection check (which does not inherit the base) reaches the same relay as the base"
    );
    assert!(base["baseUrl"].as_str().unwrap().contains("{{common."), "the relay's URL is set in one place");
}

#[test]
fn make_app_calls_only_routes_and_fields_the_relay_has() {
    let doc = openapi();
    let error_fields = properties(&doc, &doc["components"]["schemas"]["Error"]);
    let mut used = BTreeSet::new();
    for file in [
        "connections/stencil-relay/stencil-relay.communication.iml.json",
        "webhooks/images/images.attach.iml.json",
        "webhooks/images/images.detach.iml.json",
    ] {
        let path = format!("{MAKE}/{file}");
        let call = json_file(&path);
        let url = call["url"].as_str().unwrap().trim_start_matches("{{common.relayUrl}}");
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
        let text = std::fs::read_to_string(Path::new(ROOT).join(&path)).unwrap();
        for (_, field) in iml_references(&text).into_iter().filter(|(v, _)| v == "body") {
            let field = field.expect("a body field");
            assert!(
                success.contains(&field) || error_fields.contains(&field),
                "{path} reads body.{field}, absent from {pattern}"
            );
        }
    }
    assert_eq!(used, BTreeSet::from(["GET /v1/connection", "POST /v1/hooks", "DELETE /v1/hooks/{id}"]));
    let attach = json_file(&format!("{MAKE}/webhooks/images/images.attach.iml.json"));
    assert_eq!(attach["body"]["url"], "{{webhook.url}}");
    assert_eq!(attach["response"]["data"]["externalHookId"], "{{body.id}}");
    let detach = json_file(&format!("{MAKE}/webhooks/images/images.detach.iml.json"));
    assert!(detach["url"].as_str().unwrap().contains("{{webhook.externalHookId}}"));
}

/// The trigger passes the webhook's bundle through as it is (one bundle per delivery), and its
/// interface and sample are what Stencil sends.
#[test]
fn make_trigger_outputs_stencils_payload() {
    let (_, files) = make_manifest();
    for file in &files {
        let text = std::fs::read_to_string(Path::new(ROOT).join(MAKE).join(file)).unwrap();
        assert!(!text.contains("{{trigger"), "{file}: `trigger` is not an IML variable");
    }
    let module = format!("{MAKE}/modules/watch-images/watch-images");
    assert_eq!(json_file(&format!("{module}.communication.iml.json")), serde_json::json!({}), "Make's default output");
    assert_eq!(json_file(&format!("{MAKE}/webhooks/images/images.communication.iml.json"))["output"], "{{body}}");
    let payload = stencil_payload();
    let interface = json_file(&format!("{module}.interface.iml.json"));
    let names: BTreeSet<&str> = interface.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    let keys: BTreeSet<&str> = payload.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, keys, "the interface lists exactly what Stencil sends");
    let modification_spec = interface.as_array().unwrap().iter().find(|f| f["name"] == "modifications").unwrap();
    let spec: BTreeSet<&str> =
        modification_spec["spec"]["spec"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for entry in payload["modifications"].as_array().unwrap() {
        for key in entry.as_object().unwrap().keys() {
            assert!(spec.contains(key.as_str()), "modification field {key} is missing from the interface");
        }
    }
    assert_eq!(json_file(&format!("{module}.samples.iml.json")), payload);
}

/// Every `method: 'M', url: `${baseUrl()}/path`` call in a Zapier source file.
fn zapier_calls(source: &str) -> Vec<(String, String)> {
    source
        .split("method: '")
        .skip(1)
        .filter_map(|rest| {
            let (method, rest) = rest.split_once('\'')?;
            let url = rest.split_once("url: `${baseUrl()}")?.1.split_once('`')?.0;
            Some((method.to_owned(), url.to_owned()))
        })
        .collect()
}

#[test]
fn zapier_rest_hook_calls_only_routes_the_relay_has_and_samples_what_it_lists() {
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
    let mut sample = json_file("integrations/zapier/samples/image-created.json");
    assert!(sample["id"].is_string(), "Zapier needs an id on every item");
    sample.as_object_mut().unwrap().remove("id");
    assert_eq!(sample, stencil_payload());
}

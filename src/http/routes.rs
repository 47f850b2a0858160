//! The whole URL surface on one screen: `(method, path)` → [`Route`].
//!
//! | method | path | handler |
//! |---|---|---|
//! | GET | /healthz, /readyz, /metrics | ops |
//! | GET | /ui, /ui/, /ui/{asset} | ui (the dashboard) |
//! | POST | /v1/ingest/{connection_id} | ingest |
//! | GET | /v1/connection | hooks |
//! | GET, POST | /v1/hooks | hooks |
//! | GET, DELETE | /v1/hooks/{id} | hooks |
//! | GET | /v1/hooks/{id}/deliveries | hooks |
//! | GET | /v1/hooks/{id}/secret | hooks |
//! | POST | /v1/hooks/{id}/secret/rotate, /v1/hooks/{id}/enable | hooks |
//! | GET | /v1/events | hooks |
//! | POST | /v1/test-events | hooks |
//! | GET | /v1/stats | hooks |
//! | GET | /v1/events/{id}/deliveries | hooks |
//! | POST | /v1/deliveries/{id}/replay | hooks |
//! | GET | /v1/dead-letters | hooks |
//! | POST | /v1/dead-letters/{id}/retry | hooks |
//! | GET, POST | /admin/v1/connections | admin |
//! | GET, DELETE | /admin/v1/connections/{id} | admin |
//! | GET | /admin/v1/connections/{id}/hooks | admin |
//! | POST | /admin/v1/connections/{id}/api-key | admin |
//! | POST | /admin/v1/connections/{id}/signing-secret | admin |
//! | GET | /admin/v1/dead-letters | admin |
//! | GET | /admin/v1/overview | admin |
//! | POST | /admin/v1/dead-letters/{id}/retry | admin |

use hyper::Method;

use super::error::ApiError;

/// A matched route with its path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `GET /ui` (the page, as `/ui/`)
    UiRoot,
    /// `GET /ui/{asset}` (`""`: the page)
    Ui(&'a str),
    /// `POST /v1/ingest/{connection_id}`
    Ingest(&'a str),
    /// `GET /v1/connection`
    Connection,
    /// `GET /v1/hooks`
    ListHooks,
    /// `POST /v1/hooks`
    AttachHook,
    /// `GET /v1/hooks/{id}`
    GetHook(&'a str),
    /// `DELETE /v1/hooks/{id}`
    DetachHook(&'a str),
    /// `GET /v1/hooks/{id}/deliveries`
    HookDeliveries(&'a str),
    /// `GET /v1/hooks/{id}/secret`
    HookSecret(&'a str),
    /// `POST /v1/hooks/{id}/secret/rotate`
    RotateHookSecret(&'a str),
    /// `POST /v1/hooks/{id}/enable`
    EnableHook(&'a str),
    /// `GET /v1/events`
    Events,
    /// `POST /v1/test-events`
    TestEvent,
    /// `GET /v1/stats`
    Stats,
    /// `GET /v1/events/{id}/deliveries`
    EventDeliveries(&'a str),
    /// `POST /v1/deliveries/{id}/replay`
    ReplayDelivery(&'a str),
    /// `GET /v1/dead-letters`
    OwnDeadLetters,
    /// `POST /v1/dead-letters/{id}/retry`
    RetryOwnDeadLetter(&'a str),
    /// `GET /admin/v1/connections`
    ListConnections,
    /// `POST /admin/v1/connections`
    CreateConnection,
    /// `GET /admin/v1/connections/{id}`
    GetConnection(&'a str),
    /// `PATCH /admin/v1/connections/{id}`
    PatchConnection(&'a str),
    /// `DELETE /admin/v1/connections/{id}`
    DeleteConnection(&'a str),
    /// `GET /admin/v1/connections/{id}/hooks`
    ConnectionHooks(&'a str),
    /// `POST /admin/v1/connections/{id}/api-key`
    RotateApiKey(&'a str),
    /// `POST /admin/v1/connections/{id}/signing-secret`
    RotateSigningSecret(&'a str),
    /// `GET /admin/v1/dead-letters`
    DeadLetters,
    /// `GET /admin/v1/overview`
    Overview,
    /// `POST /admin/v1/dead-letters/{id}/retry`
    RetryDeadLetter(&'a str),
}

impl Route<'_> {
    /// The route's pattern, for logs and metrics (bounded: never a raw path).
    pub fn pattern(&self) -> &'static str {
        match self {
            Route::Healthz => "GET /healthz",
            Route::Readyz => "GET /readyz",
            Route::Metrics => "GET /metrics",
            Route::UiRoot => "GET /ui",
            Route::Ui("") => "GET /ui/",
            Route::Ui(_) => "GET /ui/{asset}",
            Route::Ingest(_) => "POST /v1/ingest/{connection_id}",
            Route::Connection => "GET /v1/connection",
            Route::ListHooks => "GET /v1/hooks",
            Route::AttachHook => "POST /v1/hooks",
            Route::GetHook(_) => "GET /v1/hooks/{id}",
            Route::DetachHook(_) => "DELETE /v1/hooks/{id}",
            Route::HookDeliveries(_) => "GET /v1/hooks/{id}/deliveries",
            Route::HookSecret(_) => "GET /v1/hooks/{id}/secret",
            Route::RotateHookSecret(_) => "POST /v1/hooks/{id}/secret/rotate",
            Route::EnableHook(_) => "POST /v1/hooks/{id}/enable",
            Route::Events => "GET /v1/events",
            Route::TestEvent => "POST /v1/test-events",
            Route::Stats => "GET /v1/stats",
            Route::EventDeliveries(_) => "GET /v1/events/{id}/deliveries",
            Route::ReplayDelivery(_) => "POST /v1/deliveries/{id}/replay",
            Route::OwnDeadLetters => "GET /v1/dead-letters",
            Route::RetryOwnDeadLetter(_) => "POST /v1/dead-letters/{id}/retry",
            Route::ListConnections => "GET /admin/v1/connections",
            Route::CreateConnection => "POST /admin/v1/connections",
            Route::GetConnection(_) => "GET /admin/v1/connections/{id}",
            Route::PatchConnection(_) => "PATCH /admin/v1/connections/{id}",
            Route::DeleteConnection(_) => "DELETE /admin/v1/connections/{id}",
            Route::ConnectionHooks(_) => "GET /admin/v1/connections/{id}/hooks",
            Route::RotateApiKey(_) => "POST /admin/v1/connections/{id}/api-key",
            Route::RotateSigningSecret(_) => "POST /admin/v1/connections/{id}/signing-secret",
            Route::DeadLetters => "GET /admin/v1/dead-letters",
            Route::Overview => "GET /admin/v1/overview",
            Route::RetryDeadLetter(_) => "POST /admin/v1/dead-letters/{id}/retry",
        }
    }

    /// Whether the route belongs to the operator API.
    pub fn is_admin(&self) -> bool {
        self.pattern().contains(" /admin/")
    }
}

/// Every route pattern, for documentation checks.
pub const PATTERNS: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /ui",
    "GET /ui/",
    "GET /ui/{asset}",
    "POST /v1/ingest/{connection_id}",
    "GET /v1/connection",
    "GET /v1/hooks",
    "POST /v1/hooks",
    "GET /v1/hooks/{id}",
    "DELETE /v1/hooks/{id}",
    "GET /v1/hooks/{id}/deliveries",
    "GET /v1/hooks/{id}/secret",
    "POST /v1/hooks/{id}/secret/rotate",
    "POST /v1/hooks/{id}/enable",
    "GET /v1/events",
    "POST /v1/test-events",
    "GET /v1/stats",
    "GET /v1/events/{id}/deliveries",
    "POST /v1/deliveries/{id}/replay",
    "GET /v1/dead-letters",
    "POST /v1/dead-letters/{id}/retry",
    "GET /admin/v1/connections",
    "POST /admin/v1/connections",
    "GET /admin/v1/connections/{id}",
    "PATCH /admin/v1/connections/{id}",
    "DELETE /admin/v1/connections/{id}",
    "GET /admin/v1/connections/{id}/hooks",
    "POST /admin/v1/connections/{id}/api-key",
    "POST /admin/v1/connections/{id}/signing-secret",
    "GET /admin/v1/dead-letters",
    "GET /admin/v1/overview",
    "POST /admin/v1/dead-letters/{id}/retry",
];

/// Matches a request line.
///
/// # Errors
/// 404 for an unknown path, 405 (with `Allow`) for a known path and another method.
pub(super) fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, ApiError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let m = method.as_str();
    let (route, allow) = match segments.as_slice() {
        ["healthz"] => (pick(m, [("GET", Route::Healthz)]), "GET"),
        ["readyz"] => (pick(m, [("GET", Route::Readyz)]), "GET"),
        ["metrics"] => (pick(m, [("GET", Route::Metrics)]), "GET"),
        ["ui"] => (pick(m, [("GET", Route::UiRoot)]), "GET"),
        ["ui", asset] => (pick(m, [("GET", Route::Ui(asset))]), "GET"),
        ["v1", "ingest", id] if !id.is_empty() => (pick(m, [("POST", Route::Ingest(id))]), "POST"),
        ["v1", "connection"] => (pick(m, [("GET", Route::Connection)]), "GET"),
        ["v1", "hooks"] => (pick(m, [("GET", Route::ListHooks), ("POST", Route::AttachHook)]), "GET, POST"),
        ["v1", "hooks", id] if !id.is_empty() => {
            (pick(m, [("GET", Route::GetHook(id)), ("DELETE", Route::DetachHook(id))]), "GET, DELETE")
        }
        ["v1", "hooks", id, "deliveries"] if !id.is_empty() => (pick(m, [("GET", Route::HookDeliveries(id))]), "GET"),
        ["v1", "hooks", id, "secret"] if !id.is_empty() => (pick(m, [("GET", Route::HookSecret(id))]), "GET"),
        ["v1", "hooks", id, "secret", "rotate"] if !id.is_empty() => {
            (pick(m, [("POST", Route::RotateHookSecret(id))]), "POST")
        }
        ["v1", "hooks", id, "enable"] if !id.is_empty() => (pick(m, [("POST", Route::EnableHook(id))]), "POST"),
        ["v1", "events"] => (pick(m, [("GET", Route::Events)]), "GET"),
        ["v1", "test-events"] => (pick(m, [("POST", Route::TestEvent)]), "POST"),
        ["v1", "stats"] => (pick(m, [("GET", Route::Stats)]), "GET"),
        ["v1", "events", id, "deliveries"] if !id.is_empty() => (pick(m, [("GET", Route::EventDeliveries(id))]), "GET"),
        ["v1", "deliveries", id, "replay"] if !id.is_empty() => {
            (pick(m, [("POST", Route::ReplayDelivery(id))]), "POST")
        }
        ["v1", "dead-letters"] => (pick(m, [("GET", Route::OwnDeadLetters)]), "GET"),
        ["v1", "dead-letters", id, "retry"] if !id.is_empty() => {
            (pick(m, [("POST", Route::RetryOwnDeadLetter(id))]), "POST")
        }
        ["admin", "v1", "connections"] => {
            (pick(m, [("GET", Route::ListConnections), ("POST", Route::CreateConnection)]), "GET, POST")
        }
        ["admin", "v1", "connections", id] if !id.is_empty() => {
            let options = [
                ("GET", Route::GetConnection(id)),
                ("PATCH", Route::PatchConnection(id)),
                ("DELETE", Route::DeleteConnection(id)),
            ];
            (pick(m, options), "GET, PATCH, DELETE")
        }
        ["admin", "v1", "connections", id, "hooks"] if !id.is_empty() => {
            (pick(m, [("GET", Route::ConnectionHooks(id))]), "GET")
        }
        ["admin", "v1", "connections", id, "api-key"] if !id.is_empty() => {
            (pick(m, [("POST", Route::RotateApiKey(id))]), "POST")
        }
        ["admin", "v1", "connections", id, "signing-secret"] if !id.is_empty() => {
            (pick(m, [("POST", Route::RotateSigningSecret(id))]), "POST")
        }
        ["admin", "v1", "dead-letters"] => (pick(m, [("GET", Route::DeadLetters)]), "GET"),
        ["admin", "v1", "overview"] => (pick(m, [("GET", Route::Overview)]), "GET"),
        ["admin", "v1", "dead-letters", id, "retry"] if !id.is_empty() => {
            (pick(m, [("POST", Route::RetryDeadLetter(id))]), "POST")
        }
        _ => return Err(ApiError::not_found("route")),
    };
    route.ok_or_else(|| ApiError::method_not_allowed(allow))
}

fn pick<'a, const N: usize>(method: &str, options: [(&str, Route<'a>); N]) -> Option<Route<'a>> {
    options.into_iter().find(|(m, _)| *m == method).map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_routes_to_itself() {
        for pattern in PATTERNS {
            let (method, path) = pattern.split_once(' ').unwrap();
            let path = path.replace("{connection_id}", "c1").replace("{id}", "x1");
            let route = route(&method.parse().unwrap(), &path).unwrap();
            assert_eq!(route.pattern(), *pattern);
        }
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(route(&Method::GET, "/nope").unwrap_err().status(), 404);
        assert_eq!(route(&Method::GET, "/v1/hooks/").unwrap_err().status(), 404);
        assert_eq!(route(&Method::PUT, "/v1/hooks").unwrap_err().status(), 405);
        assert_eq!(route(&Method::GET, "/v1/ingest/c1").unwrap_err().status(), 405);
    }
}

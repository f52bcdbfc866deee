//! Counts the requests the operator's own Kubernetes client sends, by verb and
//! resource, as `teamaccess_kube_requests_total`: what it costs the API server,
//! seen from the operator's side, exactly (no subtraction of anyone else's load).

use std::sync::Arc;

use http::{Method, Request};
use tower::util::MapRequestLayer;

use super::metrics::Metrics;

/// A layer for the kube client stack that counts every request it sends.
pub fn layer<B>(metrics: Arc<Metrics>) -> MapRequestLayer<impl Fn(Request<B>) -> Request<B> + Clone> {
    MapRequestLayer::new(move |request: Request<B>| {
        let (verb, resource) = classify(request.method(), request.uri().path(), request.uri().query());
        metrics.kube_request(verb, &resource);
        request
    })
}

/// The Kubernetes verb and the resource (with `/subresource`) of a request, from
/// its method and URL as the API server's request info reads them.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return (if *method == Method::GET { "get" } else { "other" }, "other".into()),
    };
    // namespaces/<ns>/<resource>/... is a namespaced request, except for the
    // Namespace object's own subresources (namespaces/<name>/status, /finalize).
    let rest = match rest {
        ["namespaces", _, resource, tail @ ..] if !matches!(*resource, "status" | "finalize") => {
            [&[*resource][..], tail].concat()
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => ("other".to_string(), false),
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, subresource, ..] => (format!("{resource}/{subresource}"), true),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, path: &str, query: Option<&str>) -> (&'static str, String) {
        classify(&method, path, query)
    }

    #[test]
    fn requests_are_classified_as_the_api_server_reads_them() {
        assert_eq!(of(Method::POST, "/api/v1/namespaces", None), ("create", "namespaces".into()));
        assert_eq!(of(Method::GET, "/api/v1/namespaces/dev", None), ("get", "namespaces".into()));
        assert_eq!(of(Method::PUT, "/api/v1/namespaces/dev/finalize", None), ("update", "namespaces/finalize".into()));
        assert_eq!(
            of(Method::GET, "/apis/rbac.authorization.k8s.io/v1/rolebindings", Some("labelSelector=x&watch=true")),
            ("watch", "rolebindings".into())
        );
        assert_eq!(
            of(Method::GET, "/apis/rbac.authorization.k8s.io/v1/rolebindings", Some("limit=500")),
            ("list", "rolebindings".into())
        );
        assert_eq!(
            of(Method::POST, "/apis/rbac.authorization.k8s.io/v1/namespaces/dev/roles", None),
            ("create", "roles".into())
        );
        assert_eq!(
            of(Method::DELETE, "/apis/rbac.authorization.k8s.io/v1/namespaces/dev/roles/teamaccess-x", None),
            ("delete", "roles".into())
        );
        assert_eq!(
            of(Method::PATCH, "/apis/teamaccess.dev/v1alpha1/teamaccesses/appdev-dev/status", None),
            ("patch", "teamaccesses/status".into())
        );
        assert_eq!(
            of(Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events", None),
            ("create", "events".into())
        );
        assert_eq!(of(Method::GET, "/version", None), ("get", "other".into()));
    }
}

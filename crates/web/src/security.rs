//! Security headers on every response.
//!
//! The API serves JSON and text today, but the dashboard will serve HTML from the same origin;
//! the headers are set here once so no handler can forget them. A header a handler set itself
//! wins: it knows its response better than a blanket policy does.

use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

/// Only what the page's own origin serves may run or load, and no other site may frame it:
/// a dashboard that shows meter data and holds a token has no reason to trust anything else.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'";

/// One year: long enough that a browser that once reached the server over HTTPS never falls
/// back to plain HTTP (where a token would travel in clear) between visits.
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// Wraps every route of `router` (the fallback too) with the headers; `tls` says whether the
/// server answers over HTTPS, the only case where HSTS means anything.
pub fn apply(router: Router, tls: bool) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| headers(tls, req, next),
    ))
}

async fn headers(tls: bool, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    add_headers(response.headers_mut(), tls);
    response
}

fn add_headers(headers: &mut HeaderMap, tls: bool) {
    let keep_or_set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    keep_or_set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    keep_or_set(headers, header::REFERRER_POLICY, "no-referrer");
    keep_or_set(headers, header::X_FRAME_OPTIONS, "DENY");
    if tls {
        keep_or_set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            STRICT_TRANSPORT_SECURITY,
        );
    }
    if is_html(headers) {
        keep_or_set(
            headers,
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        );
    }
}

fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::response::{Html, IntoResponse};
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(tls: bool) -> Router {
        let router = Router::new()
            .route("/json", get(|| async { axum::Json(serde_json::json!({})) }))
            .route("/page", get(|| async { Html("<p>hi</p>") }))
            .route(
                "/own",
                get(|| async {
                    (
                        [
                            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
                            (header::CONTENT_TYPE, "TEXT/HTML; charset=utf-8"),
                            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
                        ],
                        "<p>framed</p>",
                    )
                        .into_response()
                }),
            );
        apply(router, tls)
    }

    async fn call(app: Router, path: &str) -> Response {
        app.oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_response_gets_the_basic_headers_and_html_gets_a_csp() {
        let r = call(app(false), "/json").await;
        let h = r.headers();
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert!(h.get(header::CONTENT_SECURITY_POLICY).is_none());
        assert!(h.get(header::STRICT_TRANSPORT_SECURITY).is_none());

        let r = call(app(false), "/page").await;
        assert_eq!(
            r.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );

        let r = call(app(false), "/nowhere").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[tokio::test]
    async fn hsts_only_over_tls() {
        let r = call(app(true), "/json").await;
        assert_eq!(
            r.headers()[header::STRICT_TRANSPORT_SECURITY],
            STRICT_TRANSPORT_SECURITY
        );
    }

    #[tokio::test]
    async fn headers_a_handler_set_are_kept() {
        let r = call(app(true), "/own").await;
        let h = r.headers();
        assert_eq!(h[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "default-src 'none'");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}

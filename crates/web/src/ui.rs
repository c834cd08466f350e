//! The dashboard: `ui/dist`, embedded at compile time by build.rs, served at `/` and
//! `/assets/…`. The pages are a single HTML file with hash routes (`#/device/ID`), so the
//! server needs no fallback for client-side paths.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiPath, ApiResult};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// Vite names every asset after its content hash, so a name never changes meaning and may be
/// kept for a year; index.html is what points at new names, so it is revalidated every time.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Shown at `/` by a binary built without the UI.
const NOT_BUILT: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Wattline</title></head>
<body>
<h1>Wattline</h1>
<p>This binary was built without the dashboard (npm was not found, or WATTLINE_SKIP_UI was set).
The API works: see <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p>
<p>To add the dashboard, install Node.js (20 or newer) and run:</p>
<pre>cd ui &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>then rebuild Wattline (<code>cargo build --release -p wattline</code>); the build embeds <code>ui/dist</code>.</p>
</body></html>
";

fn asset(name: &str) -> Option<&'static [u8]> {
    embedded::ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// Whether this binary carries the dashboard.
pub fn built() -> bool {
    asset("index.html").is_some()
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `GET /`: the dashboard, or how to build it.
pub async fn index() -> Response {
    let body = asset("index.html").unwrap_or(NOT_BUILT.as_bytes());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /assets/{*path}`: the scripts and styles index.html names.
pub async fn assets(ApiPath(path): ApiPath<String>) -> ApiResult<Response> {
    let name = format!("assets/{path}");
    let body = asset(&name).ok_or_else(|| ApiError::not_found(format!("asset {path}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&name)),
            (header::CACHE_CONTROL, IMMUTABLE),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_index_names_only_embedded_assets() {
        let Some(index) = asset("index.html") else {
            eprintln!("the dashboard is not embedded in this build; nothing to check");
            return;
        };
        let index = std::str::from_utf8(index).unwrap();
        for part in index.split("/assets/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(asset(&format!("assets/{name}")).is_some(), "{name} missing");
        }
        assert!(!index.contains("<script>"), "no inline script (CSP)");
        assert!(!index.contains("<style"), "no inline style (CSP)");
    }

    #[test]
    fn types_follow_extensions() {
        assert_eq!(
            content_type("assets/a-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/a-1.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}

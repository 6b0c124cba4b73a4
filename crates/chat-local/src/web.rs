//! The browser client, embedded in the binary so that `chat serve` needs no other file.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../../web/static/index.html");
const APP_JS: &str = include_str!("../../../web/static/app.js");
const STYLE_CSS: &str = include_str!("../../../web/static/style.css");
/// The client library (clients/js/src), which app.js imports as ES modules: no build step, the
/// files as they are in the repository.
const CLIENT_JS: [(&str, &str); 5] = [
    (
        "/client/index.js",
        include_str!("../../../clients/js/src/index.js"),
    ),
    (
        "/client/client.js",
        include_str!("../../../clients/js/src/client.js"),
    ),
    (
        "/client/errors.js",
        include_str!("../../../clients/js/src/errors.js"),
    ),
    (
        "/client/emitter.js",
        include_str!("../../../clients/js/src/emitter.js"),
    ),
    (
        "/client/sequence.js",
        include_str!("../../../clients/js/src/sequence.js"),
    ),
];

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `/`, `/app.js`, `/style.css` and the client library under `/client/`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for (path, body) in CLIENT_JS {
        router = router.route(
            path,
            get(move || async move { asset("text/javascript; charset=utf-8", body) }),
        );
    }
    router
        .route(
            "/",
            get(|| async {
                (
                    [(
                        header::CONTENT_SECURITY_POLICY,
                        // Only our own files; WebSockets to any server the person picks.
                        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                    )],
                    asset("text/html; charset=utf-8", INDEX_HTML),
                )
            }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

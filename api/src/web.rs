//! The web chat app (`web/` in the source tree), served from the binary itself so that a
//! fresh `cargo run` gives a person something to open in a browser.
//!
//! The files are compiled in (`include_bytes!`): the app is a handful of static files and
//! the SDK bundled by `clients/js` (`npm run bundle`, committed as `web/chatd.js` and
//! checked fresh by the test script), so serving it needs neither Node nor a directory next
//! to the binary. The page learns where to sign in and where MQTT listens from
//! `{path}/config.json`; everything else it does through the public REST API and MQTT, as
//! any client would. Answers carry a strict Content-Security-Policy: the page runs only its
//! own scripts, and message contents are rendered as text, never as HTML.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

/// Where the app is served and what it signs in to.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// `/web`: the app is at `/web/`.
    pub path: String,
    /// The app users sign in to.
    pub org: String,
    pub app: String,
    /// The MQTT WebSocket URL, when a proxy puts it somewhere the page cannot guess.
    pub mqtt_url: Option<String>,
    /// The ports of `mqtt.ws` and `mqtt.wss` (the page uses its own host name).
    pub ws_port: Option<u16>,
    pub wss_port: Option<u16>,
}

/// One file of the app.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../web/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "chatd.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/chatd.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../web/icon.svg"),
    },
];

/// The page runs its own scripts only, connects to its own origin and to MQTT over
/// WebSocket, and shows images it fetched itself (blob URLs).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
                   connect-src 'self' ws: wss:; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
                   object-src 'none'";

/// The app's routes, under `settings.path`.
pub fn routes(settings: WebSettings) -> Router<AppState> {
    let root = settings.path.clone();
    let redirect_to = format!("{root}/");
    Router::new()
        .route(&root, get(move || async move { Redirect::permanent(&redirect_to) }))
        .route(
            &format!("{root}/"),
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route(
            &format!("{root}/config.json"),
            get(move |state: State<AppState>| config(state, settings.clone())),
        )
        .route(
            &format!("{root}/:file"),
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

/// What the page needs to sign in and connect; whether the app lets people register.
async fn config(State(state): State<AppState>, settings: WebSettings) -> Response {
    let registration = match state.store.find_app(&settings.org, &settings.app).await {
        Ok(app) => match state.store.app_settings(&app.id).await {
            Ok(app_settings) => app_settings.open_registration,
            Err(_) => false,
        },
        Err(_) => {
            let body = json!({
                "error": format!("web.app names {}/{}, which does not exist", settings.org, settings.app),
            });
            return (StatusCode::SERVICE_UNAVAILABLE, no_cache(), Json(body)).into_response();
        }
    };
    let body = json!({
        "org": settings.org,
        "app": settings.app,
        "mqtt_url": settings.mqtt_url,
        "ws_port": settings.ws_port,
        "wss_port": settings.wss_port,
        "mqtt_path": "/mqtt",
        "registration": registration,
    });
    (no_cache(), Json(body)).into_response()
}

fn no_cache() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))]
}

/// One file, revalidated on each load (ETag), with the page's security headers.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file in the web app").into_response();
    };
    let etag = format!("\"{:016x}\"", fnv1a(asset.bytes));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let gzip_accepted = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip_accepted {
        let body = gzipped(asset);
        (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            body,
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header value"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Whether an `Accept-Encoding` value accepts gzip (`gzip`, `gzip;q=0.5`; not `gzip;q=0`).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        parts.next() == Some("gzip")
            && parts.all(|p| {
                p.strip_prefix("q=")
                    .is_none_or(|q| q.parse::<f32>().is_ok_and(|q| q > 0.0))
            })
    })
}

/// An asset compressed with gzip, once per process (the SDK bundle: 382 KB, 116 KB gzipped).
fn gzipped(asset: &Asset) -> &'static [u8] {
    use std::io::Write;
    use std::sync::OnceLock;
    static GZIPPED: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let all = GZIPPED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                encoder.write_all(a.bytes).expect("writing to memory");
                encoder.finish().expect("writing to memory")
            })
            .collect()
    });
    let index = ASSETS.iter().position(|a| a.name == asset.name).expect("one of ASSETS");
    &all[index]
}

/// A stable fingerprint of a file's bytes, for its ETag.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_there_and_unknown_names_are_not_served() {
        for asset in ASSETS {
            assert!(!asset.bytes.is_empty(), "{} is empty", asset.name);
            assert_eq!(serve(asset.name, &HeaderMap::new()).status(), StatusCode::OK);
        }
        for name in ["../Cargo.toml", "..", "index.htm", "", "%2e%2e"] {
            assert_eq!(serve(name, &HeaderMap::new()).status(), StatusCode::NOT_FOUND, "{name}");
        }
    }

    #[test]
    fn files_are_gzipped_for_browsers_that_accept_it() {
        use std::io::Read;
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br, gzip;q=0.9"));
        let response = serve("chatd.js", &headers);
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        let zipped = gzipped(&ASSETS[2]);
        assert!(zipped.len() * 2 < ASSETS[2].bytes.len());
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(zipped).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, ASSETS[2].bytes);
        assert!(!accepts_gzip("gzip;q=0, br") && !accepts_gzip("deflate") && accepts_gzip("deflate, gzip"));
        let plain_response = serve("chatd.js", &HeaderMap::new());
        assert!(plain_response.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn an_unchanged_file_is_not_sent_again() {
        let first = serve("app.js", &HeaderMap::new());
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &headers).status(), StatusCode::NOT_MODIFIED);
    }
}

//! Cross-origin requests from browsers: which web pages may call the API.
//!
//! A page on another origin (a web app on `https://app.example.com` calling
//! `https://chat.example.com`) may call the API only if its origin is allowed: the API's own
//! origin (`api.public_url`), the origins in `api.cors_origins` (or every origin with `"*"`),
//! and, with `api.cors_allow_localhost`, any `http://localhost`, `127.0.0.1` or `[::1]` page
//! on any port (the dev default, for a web app served by a dev server). Preflights
//! (`OPTIONS` with `Access-Control-Request-Method`) are answered before routing; the
//! headers tus and ranged downloads need are exposed to scripts.
//!
//! The API authenticates with bearer tokens, never cookies, so no credentials mode is
//! needed: a browser never sends a token a page did not put in the request itself.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

/// Who may call the API from a browser.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorsSettings {
    /// Every origin (`"*"` configured).
    pub any: bool,
    /// Allowed origins, normalised (`https://app.example.com`, `http://host:8080`).
    pub origins: Vec<String>,
    /// Any port on localhost, 127.0.0.1 and [::1] over http or https.
    pub localhost: bool,
}

/// `scheme://host[:port]`, lower-cased, with a default port left out; an error names what
/// is wrong.
pub fn normalise_origin(origin: &str) -> Result<String, String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or_else(|| format!("'{origin}' is not an origin: it needs http:// or https://"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("'{origin}': an origin is http:// or https://"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("'{origin}': an origin is scheme://host[:port], without a path"));
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    Ok(format!(
        "{scheme}://{}",
        rest.strip_suffix(default_port).unwrap_or(rest)
    ))
}

impl CorsSettings {
    /// From the configuration: `origins` as written (`"*"` alone: any), the API's own
    /// `public_url`, and whether localhost pages are allowed.
    pub fn new(origins: &[String], public_url: &str, localhost: bool) -> Result<CorsSettings, String> {
        let mut settings = CorsSettings {
            localhost,
            ..CorsSettings::default()
        };
        for origin in origins {
            if origin.trim() == "*" {
                settings.any = true;
            } else {
                settings.origins.push(normalise_origin(origin)?);
            }
        }
        if let Ok(own) = normalise_origin(public_url) {
            settings.origins.push(own);
        }
        Ok(settings)
    }

    /// Whether a page on `origin` may call the API.
    pub fn allows(&self, origin: &str) -> bool {
        if self.any {
            return true;
        }
        let Ok(origin) = normalise_origin(origin) else {
            return false;
        };
        if self.origins.contains(&origin) {
            return true;
        }
        if self.localhost {
            let host = origin.split_once("://").map_or("", |(_, rest)| rest);
            let host = match host.rsplit_once(':') {
                Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => h,
                _ => host,
            };
            return matches!(host, "localhost" | "127.0.0.1" | "[::1]");
        }
        false
    }

    /// The layer answering preflights and adding the CORS headers.
    pub fn layer(&self) -> CorsLayer {
        let settings = self.clone();
        let expose: Vec<HeaderName> = [
            "location",
            "upload-offset",
            "upload-length",
            "upload-expires",
            "tus-resumable",
            "tus-version",
            "tus-max-size",
            "tus-extension",
            "content-range",
            "accept-ranges",
            "etag",
            "last-modified",
            "retry-after",
            "content-disposition",
            // A tus upload's last PATCH (and HEAD once done) names the chatfile it became.
            "chatfile-uuid",
        ]
        .into_iter()
        .map(HeaderName::from_static)
        .collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                origin.to_str().is_ok_and(|o| settings.allows(o))
            }))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::HEAD,
                Method::OPTIONS,
            ])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(ExposeHeaders::list(expose.into_iter().chain([header::CONTENT_TYPE])))
            .max_age(Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_and_checked() {
        assert_eq!(
            normalise_origin("HTTPS://App.Example.com/").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(normalise_origin("https://a.example:443").unwrap(), "https://a.example");
        assert_eq!(
            normalise_origin("http://a.example:8080").unwrap(),
            "http://a.example:8080"
        );
        for bad in [
            "a.example",
            "ftp://a.example",
            "https://a.example/app",
            "https://",
            "https://u@a.example",
        ] {
            assert!(normalise_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn who_is_allowed() {
        let s = CorsSettings::new(&["https://app.example.com".into()], "https://chat.example.com", false).unwrap();
        assert!(s.allows("https://app.example.com") && s.allows("https://chat.example.com"));
        assert!(!s.allows("https://evil.example") && !s.allows("http://localhost:5173") && !s.allows("null"));
        let dev = CorsSettings::new(&[], "http://127.0.0.1:18080", true).unwrap();
        for ok in [
            "http://localhost:5173",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
            "https://localhost",
        ] {
            assert!(dev.allows(ok), "{ok}");
        }
        for no in [
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:80",
            "http://evil.example",
        ] {
            assert!(!dev.allows(no), "{no}");
        }
        assert!(CorsSettings::new(&["*".into()], "", false)
            .unwrap()
            .allows("https://anything.example"));
        assert!(CorsSettings::new(&["nonsense".into()], "", false).is_err());
    }
}

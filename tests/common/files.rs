//! Test support for files: a server whose files live in a directory (SQLite) or on a real
//! S3 server (PostgreSQL), uploads and downloads, and images to send.

use std::io::Cursor;

use serde_json::Value;

use super::{fresh_database, spawn_app_with, test_config, Backend, TestApp};

/// The S3 server the tests use, and a fresh bucket on it.
pub async fn s3_store() -> String {
    let endpoint = std::env::var("TEST_S3_ENDPOINT")
        .expect("TEST_S3_ENDPOINT must name an S3-compatible server (scripts/test.sh starts moto_server and sets it)");
    static CREDENTIALS: std::sync::Once = std::sync::Once::new();
    CREDENTIALS.call_once(|| {
        if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
            std::env::set_var("AWS_ACCESS_KEY_ID", "chatd-test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "chatd-test");
        }
    });
    let bucket = format!("chatd-{}", uuid_like());
    // moto creates a bucket on an unsigned PUT.
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the S3 server at {endpoint} does not answer: {e}"));
    assert!(
        created.status().is_success(),
        "creating bucket {bucket}: {}",
        created.status()
    );
    format!("s3://{bucket}?endpoint={endpoint}&region=us-east-1&allow_http=true")
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A server on `backend`: SQLite keeps files in a directory, PostgreSQL on S3.
pub async fn files_app(backend: Backend, tune: impl FnOnce(&mut chatd::Config)) -> TestApp {
    let db = fresh_database(backend).await;
    let mut config = test_config(&db.url);
    if backend == Backend::Postgres {
        config.files.store = s3_store().await;
    }
    tune(&mut config);
    spawn_app_with(config, db).await
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 99]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl TestApp {
    /// Uploads `bytes` as `filename` (claiming a content type the server must ignore).
    pub async fn upload(&self, token: &str, filename: &str, bytes: Vec<u8>) -> (u16, Value) {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(filename.to_string())
            .mime_str("text/plain")
            .unwrap();
        let form = reqwest::multipart::Form::new()
            .text("note", "ignored")
            .part("file", part);
        let resp = self
            .http
            .post(self.url("/chatfiles"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        super::into_json(resp).await
    }

    pub async fn uploaded(&self, token: &str, filename: &str, bytes: Vec<u8>) -> Value {
        let (status, body) = self.upload(token, filename, bytes).await;
        assert_eq!(status, 200, "{body}");
        body["entities"][0].clone()
    }

    /// GETs a URL with optional token and headers: status, headers, body.
    pub async fn fetch(
        &self,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = self.http.get(url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    }

    pub async fn settings(&self, patch: Value) {
        let (status, body) = self.put("/settings", &self.app_token, patch).await;
        assert_eq!(status, 200, "{body}");
    }
}

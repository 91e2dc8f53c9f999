//! Start-up errors an operator sees.

mod common;

use common::Backend;

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let db = common::fresh_database(Backend::Sqlite).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut config = common::test_config(&db.url);
    config.mqtt.tcp = format!("127.0.0.1:{port}");
    let err = chatd::start(config).await.err().expect("start fails");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("mqtt.tcp"),
        "{text}"
    );
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error() {
    let mut config = common::test_config("mysql://nope");
    config.database_url = "mysql://nope".into();
    let err = chatd::start(config).await.err().expect("start fails");
    assert!(format!("{err:#}").contains("sqlite: or postgres:"), "{err:#}");
}

#[tokio::test]
async fn a_batch_size_out_of_bounds_is_a_clear_error() {
    for size in [0, 8193] {
        let db = common::fresh_database(Backend::Sqlite).await;
        let mut config = common::test_config(&db.url);
        config.bridge.max_batch = size;
        let err = chatd::start(config).await.err().expect("start fails");
        assert!(
            format!("{err:#}").contains("bridge.max_batch must be 1 to 8192"),
            "{err:#}"
        );
    }
}

#[tokio::test]
async fn tls_needs_readable_pem_files() {
    let db = common::fresh_database(Backend::Sqlite).await;
    let mut config = common::test_config(&db.url);
    config.mqtt.tls = "127.0.0.1:0".into();
    config.mqtt.tls_cert = "/nonexistent/cert.pem".into();
    config.mqtt.tls_key = "/nonexistent/key.pem".into();
    let err = chatd::start(config).await.err().expect("start fails");
    assert!(format!("{err:#}").contains("/nonexistent/cert.pem"), "{err:#}");
}

#[tokio::test]
async fn an_unusable_file_store_is_a_clear_error() {
    let db = common::fresh_database(Backend::Sqlite).await;
    for (store, says) in [
        ("ftp://files.example.com", "files.store"),
        ("s3://bucket?colour=red", "unknown option 'colour'"),
        // Nothing listens on port 1: the store does not answer.
        (
            "s3://bucket?endpoint=http://127.0.0.1:1&region=us-east-1&allow_http=true",
            "does not answer",
        ),
    ] {
        let mut config = common::test_config(&db.url);
        config.files.store = store.into();
        let err = chatd::start(config).await.err().expect("start fails");
        assert!(format!("{err:#}").contains(says), "{store}: {err:#}");
    }
    let mut config = common::test_config(&db.url);
    config.api.public_url = "chat.example.com".into();
    let err = chatd::start(config).await.err().expect("start fails");
    assert!(format!("{err:#}").contains("api.public_url"), "{err:#}");
    let mut config = common::test_config(&db.url);
    config.api.cors_origins = "https://app.example.com, app.example.org".into();
    let err = chatd::start(config).await.err().expect("start fails");
    assert!(
        format!("{err:#}").contains("api.cors_origins") && format!("{err:#}").contains("app.example.org"),
        "{err:#}"
    );
}

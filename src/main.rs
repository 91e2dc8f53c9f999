//! The `chatd` binary: parses the command line and hands over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use chatd::Config;

/// chatd: a self-hosted chat backend on MQTT.
///
/// With no command it serves: MQTT over TCP and WebSocket (/mqtt) through the gate, the
/// embedded broker, the bridge and the REST API, on SQLite in ./chatd-data unless
/// DATABASE_URL points to PostgreSQL. On first start it creates the dev app demo/chat and
/// prints its credentials. Default listeners: MQTT 127.0.0.1:11883, MQTT over WebSocket
/// ws://127.0.0.1:18083/mqtt, REST API http://127.0.0.1:18080 (TLS off).
///
/// Configuration: built-in defaults, then --config FILE (TOML, see chatd.example.toml),
/// then environment variables CHATD_<SECTION>__<KEY> (for example CHATD_MQTT__TCP,
/// CHATD_API__LISTEN, CHATD_DATA_DIR), then DATABASE_URL.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// A TOML configuration file.
    #[arg(long, short, global = true, env = "CHATD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Ask a running chatd whether it is ready (`/health/ready`): exit status 0 if it is, 1
    /// with the reason if not. For container health checks, where there is no curl.
    Health {
        /// The URL to ask; default: `/health/ready` on `api.listen` (0.0.0.0 asked on 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the REST API's OpenAPI 3.1 document (what `GET /openapi.json` answers).
    Openapi,
    /// Manage tenants (org/app pairs) and their credentials.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// Create an app and print its client id and secret.
    Create {
        #[arg(long)]
        org: String,
        #[arg(long)]
        app: String,
    },
    /// Replace an app's client secret; app tokens issued before stop working.
    RotateSecret {
        #[arg(long)]
        org: String,
        #[arg(long)]
        app: String,
    },
    /// List apps.
    List,
}

/// mimalloc rather than glibc's malloc: a stored message is some 130 small allocations
/// (envelope, rows, acks, live copies), and glibc's malloc and free were 19% of chatd's
/// instructions per message; with mimalloc they cost half as much (BENCHMARKS.md,
/// 2026-12-03). Built with `no_thp`, or it asks for transparent huge pages and a resting
/// chatd holds 68 MiB instead of 33.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keep_large_allocations_mapped();
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        // Needs no configuration, database or logs: the document is the code's.
        println!("{}", serde_json::to_string_pretty(&api::openapi_document())?);
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    init_logs(&config.log)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::App { command } => app(config, command).await,
        Command::Health { url } => health(config, url).await,
        Command::Openapi => unreachable!("answered above"),
    }
}

/// Logs go to stderr: text (the default; colours only on a terminal) or JSON, one object
/// per line with the event's fields (`user`, `device`, `app`, `error`, …) at the top level,
/// for a log collector. `RUST_LOG` filters them (default `info`).
fn init_logs(log: &chatd::config::LogConfig) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rumqttd=off".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format.trim() {
        "" | "text" => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        other => anyhow::bail!("log.format {other:?}: must be \"text\" or \"json\""),
    }
    Ok(())
}

async fn health(config: Config, url: Option<String>) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let mut addr = chatd::config::listen_addr(&config.api.listen, "api.listen")?
                .context("api.listen is empty: give --url")?;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}/health/ready")
        }
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let answer = client.get(&url).send().await.with_context(|| format!("asking {url}"))?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    if status.is_success() {
        println!("{body}");
        Ok(())
    } else {
        eprintln!("{url}: {status} {body}");
        std::process::exit(1);
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let dev_app = config.dev_app;
    let mut server = chatd::start(config).await?;
    if dev_app {
        match chatd::ensure_dev_app(&server.store).await? {
            Some(creds) => {
                println!("Created the dev app demo/chat. Keep these; the secret is not shown again:");
                println!("  org:           demo");
                println!("  app:           chat");
                println!("  client_id:     {}", creds.client_id);
                println!("  client_secret: {}", creds.client_secret);
            }
            None => {
                if let Ok(app) = server.store.find_app("demo", "chat").await {
                    println!("Dev app demo/chat: client_id {} (secret shown on first start; `chatd app rotate-secret --org demo --app chat` makes a new one)", app.client_id);
                }
            }
        }
    }
    let show = |addr: Option<std::net::SocketAddr>| addr.map_or("off".to_string(), |a| a.to_string());
    println!("MQTT (TCP):       {}", show(server.mqtt_addr));
    println!(
        "MQTT (WebSocket): {}",
        server.ws_addr.map_or("off".into(), |a| format!("ws://{a}/mqtt"))
    );
    println!("MQTT (TLS):       {}", show(server.tls_addr));
    println!(
        "MQTT (WSS):       {}",
        server.wss_addr.map_or("off".into(), |a| format!("wss://{a}/mqtt"))
    );
    println!("REST API:         http://{}", server.api_addr);
    if let Some(addr) = server.api_tls_addr {
        println!("REST API (TLS):   https://{addr}");
    }
    println!("Files:            {}", server.file_store);
    if let Some(path) = &server.web_path {
        println!("Web app:          http://{}{path}/", server.api_addr);
    }
    // SIGTERM is what `docker stop`, systemd and Kubernetes send; SIGINT is Ctrl-C. Both
    // stop the same way: nothing acked is lost, nothing in flight is left unanswered, and
    // the exit status is 0. Handlers are installed explicitly, so the signals also work
    // when chatd is PID 1 in a container (where the default action is to ignore them).
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    // SIGHUP: read the TLS certificate and key again (a renewed certificate), no restart.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let signal = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => match server.reload_tls() {
                Ok(true) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Ok(false) => tracing::info!("SIGHUP: no TLS listener, nothing to reload"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: TLS certificate not reloaded; keeping the one in use"),
            },
            _ = server.wait() => anyhow::bail!("a component stopped unexpectedly; see the log"),
        }
    };
    tracing::info!(
        signal,
        "stopping: storing and answering what is in flight, then closing connections"
    );
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn app(config: Config, command: AppCommand) -> anyhow::Result<()> {
    let url = config.database_url();
    if config.database_url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let store = store::Store::connect(&url, 2)
        .await
        .with_context(|| format!("opening {}", chatd::redact(&url)))?;
    match command {
        AppCommand::Create { org, app } => {
            let (app, creds) = store.create_app(&org, &app).await?;
            println!("Created app {}/{} (id {}).", app.org, app.name, app.id);
            println!("client_id:     {}", creds.client_id);
            println!("client_secret: {}", creds.client_secret);
        }
        AppCommand::RotateSecret { org, app } => {
            let creds = store.rotate_app_secret(&org, &app).await?;
            println!("New secret for {org}/{app}; app tokens issued before no longer work.");
            println!("client_id:     {}", creds.client_id);
            println!("client_secret: {}", creds.client_secret);
        }
        AppCommand::List => {
            for app in store.list_apps().await? {
                println!("{}/{}\tclient_id {}\tid {}", app.org, app.name, app.client_id, app.id);
            }
        }
    }
    Ok(())
}

/// glibc's malloc still serves the C code linked in (SQLite). After a large block is freed,
/// glibc raises its mmap threshold, so later large blocks come from its heaps and stay
/// resident: when Rust's allocations went through glibc too, argon2's 19 MiB per hash took
/// the process from 15 MiB to 1.3 GiB over 240 new users. A fixed threshold keeps large
/// blocks mapped on their own and returned to the system when freed. (argon2's blocks are
/// mimalloc's now, which reuses them: 720 users with passwords, 4 hashes at a time, level
/// off at 92 MiB, as with glibc and this threshold.)
fn keep_large_allocations_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads allocate much.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

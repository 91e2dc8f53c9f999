//! Files: one large file uploaded through chatd's files API and downloaded again, on each
//! file store (a directory under the data dir, then S3-compatible storage), timed, with
//! chatd's resident memory watched all along. chatd must stream file bodies to and from the
//! store, never hold a whole file: a 50 MB video on a busy server is the case that matters.
//! So besides MB/s this reports chatd's peak RSS during each transfer over its RSS before
//! the first one (what the allocator keeps from one transfer to the next counts too). That
//! peak should stay at a few store parts (uploads go to the store in 5 MiB parts, at most
//! three in memory) whatever the file's size: run it with `--size-mb 10` and
//! `--size-mb 200` to see that it does not grow with the file.
//!
//! The file is pseudo-random bytes (incompressible, sniffed as `application/octet-stream`,
//! so no thumbnail is made), computed from their offset as the upload sends them; the
//! download is checked byte for byte against the same function. Neither side of the bench
//! holds the file, so the bench's own memory does not blur the picture.
//!
//! The S3 store is a throwaway moto server (`python3 -m moto.server`) on a free port unless
//! `--s3-endpoint` names one. moto is a single Python process, so its numbers are moto's
//! more than chatd's: the CPU time each transfer cost chatd, the S3 server (when started
//! here) and the bench is printed, to show which one was busy.
//!
//! MB here is 10^6 bytes (MB/s likewise); memory is in MiB.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::chatd::{cpu_seconds, rss_kib, Chatd};

#[derive(clap::Args, Clone)]
pub struct Files {
    /// The file's size in MB (10^6 bytes).
    #[arg(long, default_value_t = 50)]
    pub size_mb: u64,
    /// Uploads and downloads per store, one after the other.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// An S3-compatible server (`http://host:port`) to use instead of starting a moto.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// A bucket that exists on `--s3-endpoint`; else one is made with an unsigned PUT
    /// (which moto accepts). Credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    #[arg(long, requires = "s3_endpoint")]
    pub s3_bucket: Option<String>,
}

/// How many bytes the upload generates at a time.
const CHUNK: usize = 256 * 1024;
/// The default largest file of an app (and the server's, which is larger): raised for the
/// run when the file is larger.
const DEFAULT_MAX_FILE: u64 = 100 * 1024 * 1024;
const SERVER_MAX_FILE: u64 = 512 * 1024 * 1024;
const MB: f64 = 1e6;

pub async fn run(args: &Files, database_url: Option<&str>) -> anyhow::Result<()> {
    if args.size_mb == 0 || args.runs == 0 {
        bail!("--size-mb and --runs must be at least 1");
    }
    let mut stores = Vec::new();
    stores.push(measure(args, database_url, "directory".into(), &[], None).await?);

    let (endpoint, moto) = match &args.s3_endpoint {
        Some(url) => (url.trim_end_matches('/').to_string(), None),
        None => {
            let (port, child) = spawn_moto().await?;
            (format!("http://127.0.0.1:{port}"), Some(child))
        }
    };
    let bucket = match &args.s3_bucket {
        Some(bucket) => bucket.clone(),
        None => create_bucket(&endpoint).await?,
    };
    let store = format!("s3://{bucket}?endpoint={endpoint}&region=us-east-1&allow_http=true");
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "bench".into());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "bench".into());
    let env = [
        ("CHATD_FILES__STORE", store.as_str()),
        ("AWS_ACCESS_KEY_ID", key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ];
    let label = match &moto {
        Some(_) => "S3 (moto)".to_string(),
        None => format!("S3 ({endpoint})"),
    };
    let moto_pid = moto.as_ref().and_then(|child| child.id());
    stores.push(measure(args, database_url, label, &env, moto_pid).await?);
    drop(moto);

    println!();
    println!(
        "{} MB, {} runs: medians, and peak RSS over the baseline",
        args.size_mb, args.runs
    );
    println!(
        "  {:<24} {:>12} {:>14} {:>18} {:>20}",
        "store", "upload MB/s", "download MB/s", "upload peak MiB", "download peak MiB"
    );
    for store in &stores {
        println!(
            "  {:<24} {:>12.1} {:>14.1} {:>+18.1} {:>+20.1}",
            store.label,
            median(store.uploads.iter().map(|t| t.rate(store.bytes))),
            median(store.downloads.iter().map(|t| t.rate(store.bytes))),
            store.peak_over_baseline(&store.uploads),
            store.peak_over_baseline(&store.downloads),
        );
    }
    Ok(())
}

/// One store's runs.
struct Store {
    label: String,
    bytes: u64,
    /// chatd's RSS before the first upload, KiB.
    baseline_kib: u64,
    uploads: Vec<Transfer>,
    downloads: Vec<Transfer>,
}

impl Store {
    /// The highest RSS any of `transfers` reached, over the baseline, in MiB.
    fn peak_over_baseline(&self, transfers: &[Transfer]) -> f64 {
        let peak = transfers.iter().map(|t| t.peak_kib).max().unwrap_or(0);
        (peak as f64 - self.baseline_kib as f64) / 1024.0
    }
}

/// A chatd on `store` (its label; `env` selects it), `runs` uploads and downloads, each
/// printed as it ends.
async fn measure(
    args: &Files,
    database_url: Option<&str>,
    label: String,
    env: &[(&str, &str)],
    server_pid: Option<u32>,
) -> anyhow::Result<Store> {
    let bytes = args.size_mb * 1_000_000;
    let server_max = bytes.max(SERVER_MAX_FILE).to_string();
    let mut env = env.to_vec();
    env.push(("CHATD_FILES__MAX_FILE_BYTES", &server_max));
    let chatd = Chatd::start_with_env(database_url, &env).await?;
    chatd
        .put("/settings", json!({"max_file_bytes": bytes.max(DEFAULT_MAX_FILE)}))
        .await?;
    let pid = chatd.pid();
    // Let start-up settle (the first requests, the timers' first round).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline_kib = rss_kib(pid);
    println!(
        "{}, {label} store: {} MB up and down, {} runs; RSS before {:.1} MiB",
        chatd.label,
        args.size_mb,
        args.runs,
        baseline_kib as f64 / 1024.0
    );
    let mut store = Store {
        label,
        bytes,
        baseline_kib,
        uploads: Vec::new(),
        downloads: Vec::new(),
    };
    let others = if server_pid.is_some() { "S3 server" } else { "" };
    for run in 0..args.runs {
        // A new file each run: a download cannot pass on an earlier file's bytes.
        let pattern = Pattern(run as u64 + 1);
        let watch = Watch::start(pid, server_pid);
        let entity = upload(&chatd, pattern, bytes).await?;
        let up = watch.stop();
        up.print(run, "upload", bytes, others);
        let url = entity["url"].as_str().context("no url in the upload's answer")?;
        let watch = Watch::start(pid, server_pid);
        download(&chatd, url, pattern, bytes).await?;
        let down = watch.stop();
        down.print(run, "download", bytes, others);
        store.uploads.push(up);
        store.downloads.push(down);
    }
    println!(
        "  median: upload {:.1} MB/s, download {:.1} MB/s; peak RSS over the baseline: upload {:+.1} MiB, download {:+.1} MiB",
        median(store.uploads.iter().map(|t| t.rate(bytes))),
        median(store.downloads.iter().map(|t| t.rate(bytes))),
        store.peak_over_baseline(&store.uploads),
        store.peak_over_baseline(&store.downloads),
    );
    chatd.stop().await?;
    Ok(store)
}

/// Uploads `bytes` bytes of `pattern` as the part `file` of a multipart body, generated a
/// chunk at a time as reqwest sends them; returns the answer's entity.
async fn upload(chatd: &Chatd, pattern: Pattern, bytes: u64) -> anyhow::Result<Value> {
    let chunks = futures_util::stream::unfold(0u64, move |offset| async move {
        (offset < bytes).then(|| {
            let mut chunk = vec![0; (bytes - offset).min(CHUNK as u64) as usize];
            pattern.fill(offset, &mut chunk);
            let next = offset + chunk.len() as u64;
            (Ok::<_, std::io::Error>(Bytes::from(chunk)), next)
        })
    });
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), bytes)
        .file_name("bench.bin")
        .mime_str("application/octet-stream")?;
    let resp = chatd
        .http
        .post(format!("{}/chatfiles", chatd.base))
        .bearer_auth(&chatd.app_token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        bail!("upload: {status}: {body}");
    }
    let entity = body["entities"][0].clone();
    if entity["file_length"].as_u64() != Some(bytes) {
        bail!("upload: {bytes} bytes sent, the answer says {}", entity["file_length"]);
    }
    Ok(entity)
}

/// Downloads `url` a chunk at a time, checking every byte against `pattern` and the length.
async fn download(chatd: &Chatd, url: &str, pattern: Pattern, bytes: u64) -> anyhow::Result<()> {
    let resp = chatd.http.get(url).bearer_auth(&chatd.app_token).send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("download: {status}: {}", resp.text().await.unwrap_or_default());
    }
    let mut body = resp.bytes_stream();
    let mut offset = 0u64;
    let mut expected = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if offset + chunk.len() as u64 > bytes {
            bail!("download: more than the {bytes} bytes uploaded");
        }
        expected.resize(chunk.len(), 0);
        pattern.fill(offset, &mut expected);
        if chunk[..] != expected[..] {
            bail!(
                "download: bytes {offset}..{} differ from the upload's",
                offset + chunk.len() as u64
            );
        }
        offset += chunk.len() as u64;
    }
    if offset != bytes {
        bail!("download: {offset} bytes, {bytes} uploaded");
    }
    Ok(())
}

/// Pseudo-random bytes as a function of their offset (SplitMix64 of the 8-byte word's index
/// and a seed), so they can be made in any chunks, and checked in others, without storing.
#[derive(Clone, Copy)]
struct Pattern(u64);

impl Pattern {
    fn fill(self, offset: u64, buf: &mut [u8]) {
        let mut at = offset;
        let mut done = 0;
        while done < buf.len() {
            let word = splitmix64((at / 8) ^ (self.0 << 48)).to_le_bytes();
            let skip = (at % 8) as usize;
            let n = (8 - skip).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&word[skip..skip + n]);
            done += n;
            at += n as u64;
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One transfer: how long it took, chatd's RSS before it and at its peak, and the CPU time
/// it cost chatd, the S3 server (if this tool started it) and this tool.
struct Transfer {
    secs: f64,
    before_kib: u64,
    peak_kib: u64,
    cpu_chatd: f64,
    cpu_server: Option<f64>,
    cpu_bench: f64,
}

impl Transfer {
    fn rate(&self, bytes: u64) -> f64 {
        bytes as f64 / MB / self.secs
    }

    fn print(&self, run: usize, what: &str, bytes: u64, server: &str) {
        let server = match self.cpu_server {
            Some(cpu) => format!(", {server} {cpu:.2}"),
            None => String::new(),
        };
        println!(
            "  run {}: {what:<8} {:>6.2} s {:>7.1} MB/s; RSS before {:.1} MiB, peak {:.1} MiB ({:+.1}); CPU s: chatd {:.2}{server}, bench {:.2}",
            run + 1,
            self.secs,
            self.rate(bytes),
            self.before_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0,
            (self.peak_kib as f64 - self.before_kib as f64) / 1024.0,
            self.cpu_chatd,
            self.cpu_bench,
        );
    }
}

/// Watches a transfer: the clock, CPU times, and chatd's peak RSS. The peak is the kernel's
/// high-water mark (`VmHWM`, reset at the start through `/proc/PID/clear_refs`), which sees
/// every page however short-lived; and, in case that reset is not allowed, RSS sampled every
/// 20 ms on a thread of its own (so a busy runtime does not skip samples).
struct Watch {
    started: Instant,
    before_kib: u64,
    hwm_reset: bool,
    cpu: (f64, Option<f64>, f64),
    pid: u32,
    server_pid: Option<u32>,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

impl Watch {
    fn start(pid: u32, server_pid: Option<u32>) -> Watch {
        // If not allowed, the mark is the process's lifetime peak and only the samples count.
        let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let before_kib = rss_kib(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = before_kib;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    peak = peak.max(rss_kib(pid));
                }
                peak
            }
        });
        Watch {
            started: Instant::now(),
            before_kib,
            hwm_reset,
            cpu: cpu_now(pid, server_pid),
            pid,
            server_pid,
            stop,
            sampler,
        }
    }

    fn stop(self) -> Transfer {
        let secs = self.started.elapsed().as_secs_f64();
        let (chatd, server, bench) = cpu_now(self.pid, self.server_pid);
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.sampler.join().unwrap_or(0).max(rss_kib(self.pid));
        let hwm = if self.hwm_reset {
            status_kib(self.pid, "VmHWM:")
        } else {
            0
        };
        let peak_kib = sampled.max(hwm);
        Transfer {
            secs,
            before_kib: self.before_kib,
            peak_kib,
            cpu_chatd: chatd - self.cpu.0,
            cpu_server: server.zip(self.cpu.1).map(|(now, then)| now - then),
            cpu_bench: bench - self.cpu.2,
        }
    }
}

/// A `/proc/PID/status` field in KiB (0 if absent).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds so far of chatd, the S3 server and this tool.
fn cpu_now(pid: u32, server_pid: Option<u32>) -> (f64, Option<f64>, f64) {
    (
        cpu_seconds(pid),
        server_pid.map(cpu_seconds),
        cpu_seconds(std::process::id()),
    )
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Starts moto's S3 server on a free port.
async fn spawn_moto() -> anyhow::Result<(u16, tokio::process::Child)> {
    let port = crate::free_port()?;
    let mut child = tokio::process::Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting moto (pip install 'moto[server]')")?;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok((port, child));
        }
        if let Some(status) = child.try_wait()? {
            bail!("moto ended at start ({status}): is it installed? pip install 'moto[server]'");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("moto did not start on port {port}")
}

/// Creates a fresh bucket with an unsigned PUT (moto takes it; a real S3 would not).
async fn create_bucket(endpoint: &str) -> anyhow::Result<String> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let bucket = format!("chatd-bench-{stamp}");
    let resp = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .with_context(|| format!("creating bucket {bucket} on {endpoint}"))?;
    if !resp.status().is_success() {
        bail!(
            "creating bucket {bucket} on {endpoint}: {}; name an existing one with --s3-bucket",
            resp.status()
        );
    }
    Ok(bucket)
}

//! Thousands of devices on a bad mobile network, and a reconnect storm, against one chatd.
//!
//! Phones do not sit on loopback: their packets are lost, delayed and reordered, and now
//! and then the network goes away for everyone at once (a cell tower, a NAT, a load
//! balancer) and every device reconnects in the same second. This test starts the real
//! `chatd` binary inside a network namespace of its own (SQLite in a temporary directory,
//! listening on the namespace's addresses) and reaches it over two links:
//!
//! - the **lossy link**, impaired in each direction as by
//!   `tc qdisc … netem delay 200ms 100ms loss 15% reorder 25% 50% limit 100000`:
//!   100-300 ms each way, 15 % of packets lost, a quarter of them overtaking the others.
//!   Where the kernel has netem it is a veth pair with that qdisc on both ends; a kernel
//!   built without netem (this project's CI VM has none) gets a TUN pair instead, one end
//!   in the namespace, joined by two threads of this process that apply netem's model
//!   (uniform jitter, independent loss, correlated reordering). Every storm device
//!   connects through it, from four source addresses (a few carrier NATs);
//! - a **clean link** (a veth pair, never impaired) for the REST setup (users, tokens) and
//!   for a probe device that must keep getting its acks while the storm goes on.
//!
//! 2,000 devices connect over the lossy link: 500 users with four devices each (two MQTT
//! 3.1.1, one MQTT 5, one MQTT 5 with Receive Maximum 8 and topic aliases; clean sessions;
//! a raw client on rumqttc's codecs, so every retry is the test's own). Each user's first
//! device sends a one-to-one text to a random user every 4 s, retrying with the same `cid`
//! until its `ack` (stored) comes: after every reconnect, and whenever an ack has not come
//! within 5 s. Each sender's first message is published twice back to back on purpose.
//! Every device follows the catch-up contract of `topics.md`: it tracks its inbox
//! positions (`useq`) and `sync`s (paging while `more`) on every connect and whenever it
//! sees a gap.
//!
//! After 8 s of that, the lossy link is cut (netem `loss 100%`) for 6 s: every device sees
//! its network go away, drops its connection (chatd is not told: its side just goes
//! silent) and keeps trying to reconnect into the void with jittered backoff. When the
//! link comes back they all get in together: the storm (2,000 CONNECTs, each taking over
//! its dead predecessor at the server, 2,000 `sync`s, the messages queued meanwhile). The
//! test measures how long until every device is back. Sending goes on for 6 s after that,
//! then stops; every message gets acked; each sender sends one last message, which must
//! reach its recipient's devices live (not only by `sync`) if they stayed connected; every
//! device catches up with `sync` until there is no more; and a device on the clean link
//! reads every user's presence.
//!
//! Then it checks, over everything the devices saw:
//! - every acked message is in the received set of every device of its recipient, exactly
//!   once after dedupe by message id: none missing, none stored twice (two ids for one
//!   text), nothing received that no device sent;
//! - a `cid` sent more than once (the deliberate doubles and every retry) got one message
//!   id in all its acks, and is once in its sender's inbox, on each of the sender's devices;
//! - every device's inbox is gap-free (`useq` 1..=n), holds exactly what its user sent and
//!   received, and no position ever named two messages (acks, live messages and `sync`
//!   pages agree); no MQTT 5 device was sent more than its Receive Maximum unacknowledged,
//!   nor a topic alias it was not given on that connection;
//! - presence shows every user online with exactly four devices: no session of a dead
//!   connection lingers, none was miscounted;
//! - the server kept serving: the probe on the clean link got every ack, half of them
//!   within 1 s and all within 15 s, during the cut and the storm.
//!
//! The numbers (devices, messages acked, retries, storm reconnect time, connection
//! failures by kind, ack latencies, the probe's slow acks, what chatd logged at warn level
//! or above, how long each step took) are printed with `eprintln!`: run with
//! `-- --nocapture` to see them. `CHILD_LOG` sets chatd's `RUST_LOG` (e.g.
//! `warn,bridge=debug` for its batch timings) and `FLAKY_NETWORK_LOG=<file>` keeps a copy
//! of chatd's log. The test needs root (network namespaces, veth or TUN, tc) and fails,
//! never skips, when it cannot have them. It removes its namespace and links when it ends,
//! by a panic too; what a killed run leaves behind is removed by the next run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rumqttc::mqttbytes::{v4, QoS};
use rumqttc::v5::mqttbytes::{v5, QoS as V5QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// Users on the lossy link, and their devices (a phone, a tablet, a laptop, a browser):
/// each user's first device sends.
const USERS: usize = 500;
const DEVICES_PER_USER: usize = 4;
const DEVICES: usize = USERS * DEVICES_PER_USER;
/// A sender's pace.
const SEND_EVERY: Duration = Duration::from_secs(4);
/// An unacked message is published again (same cid) after this long on one connection.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Source addresses the storm devices connect from (the gate bounds connections not yet
/// past CONNECT per address: 256 by default).
const SOURCES: u8 = 4;
/// How long the link stays cut.
const CUT: Duration = Duration::from_secs(6);
/// Sending before the cut, and after the storm.
const SEND_BEFORE_CUT: Duration = Duration::from_secs(8);
const SEND_AFTER_STORM: Duration = Duration::from_secs(6);
/// The probe's pace, and the slowest ack it may get during the cut and the storm (half
/// of them must come within `PROBE_MEDIAN`). A debug build sharing two cores with the
/// test measured up to ~8 s: the bridge is one loop that stores each batch's messages and
/// then runs its `sync`s one after another, so for ~10 s after the link returns the
/// storm's catch-ups fill batch after batch (512 publishes, ~1 s each) and everyone's acks
/// wait behind them. The limits catch a server that stops serving, not that.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_LIMIT: Duration = Duration::from_secs(15);
const PROBE_MEDIAN: Duration = Duration::from_secs(1);
const KEEP_ALIVE: u16 = 30;

// ---------------------------------------------------------------------------------------
// The network: a namespace, a clean veth pair, a lossy link (netem, or its model on TUN).
// ---------------------------------------------------------------------------------------

/// Runs a command (words separated by spaces: no argument here has one); its stdout, or
/// why it failed.
fn sh(cmd: &str) -> Result<String, String> {
    let mut words = cmd.split_whitespace();
    let out = std::process::Command::new(words.next().unwrap())
        .args(words)
        .output()
        .map_err(|e| format!("`{cmd}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(cmd: &str) -> String {
    sh(cmd).unwrap_or_else(|e| panic!("setting up the test network: {e}"))
}

const NS_PREFIX: &str = "chatdfl-";

/// The impairment of the lossy link, each direction, as netem's parameters.
#[derive(Debug, Clone, Copy)]
struct Impairment {
    delay: Duration,
    jitter: Duration,
    /// Fractions.
    loss: f64,
    reorder: f64,
    reorder_correlation: f64,
}

impl Impairment {
    /// The same, as `tc qdisc … netem` arguments.
    fn netem_args(&self) -> Vec<String> {
        let mut args = vec!["limit".to_string(), "100000".into()];
        if !self.delay.is_zero() {
            args.extend([
                "delay".into(),
                format!("{}ms", self.delay.as_millis()),
                format!("{}ms", self.jitter.as_millis()),
            ]);
        }
        args.extend(["loss".into(), format!("{:.0}%", self.loss * 100.0)]);
        if self.reorder > 0.0 {
            args.extend([
                "reorder".into(),
                format!("{:.0}%", self.reorder * 100.0),
                format!("{:.0}%", self.reorder_correlation * 100.0),
            ]);
        }
        args
    }
}

/// The lossy link, each direction: `delay 200ms 100ms loss 15% reorder 25% 50%`.
const LOSSY: Impairment = Impairment {
    delay: Duration::from_millis(200),
    jitter: Duration::from_millis(100),
    loss: 0.15,
    reorder: 0.25,
    reorder_correlation: 0.5,
};

/// The lossy link, cut: `loss 100%`.
const CUT_OFF: Impairment = Impairment {
    delay: Duration::ZERO,
    jitter: Duration::ZERO,
    loss: 1.0,
    reorder: 0.0,
    reorder_correlation: 0.0,
};

/// How the lossy link is impaired.
enum Lossy {
    /// A veth pair with `tc qdisc … netem` on both ends.
    Netem,
    /// A TUN pair (one end in the namespace) joined by two threads of this process that
    /// apply netem's model themselves: for kernels built without netem.
    Userspace(Wire),
}

/// The namespace chatd runs in and the links to it; removed when dropped (a panic too).
struct Net {
    ns: String,
    lossy_root: String,
    lossy_ns: String,
    clean_root: String,
    clean_ns: String,
    lossy: Option<Lossy>,
    /// chatd's addresses, on the lossy and on the clean link.
    server_lossy: Ipv4Addr,
    server_clean: Ipv4Addr,
    /// Where storm devices connect from, and where the probe does.
    device_sources: Vec<Ipv4Addr>,
    probe_source: Ipv4Addr,
}

impl Net {
    fn create() -> Net {
        remove_leftovers();
        let pid = std::process::id();
        let ns = format!("{NS_PREFIX}{pid}");
        if let Err(e) = sh(&format!("ip netns add {ns}")) {
            panic!(
                "flaky_network needs a network namespace (root or CAP_NET_ADMIN + CAP_SYS_ADMIN, iproute2) \
                 and could not make one: {e}"
            );
        }
        let (b, c) = free_subnets(pid);
        let lossy = |d: u8| Ipv4Addr::new(10, b, c, d);
        let clean = |d: u8| Ipv4Addr::new(10, b, c + 1, d);
        // From here on, dropping `net` removes whatever was made.
        let mut net = Net {
            ns,
            // Interface names: at most 15 bytes ("fla" + a pid of up to 7 digits).
            lossy_root: format!("fla{pid}"),
            lossy_ns: format!("flb{pid}"),
            clean_root: format!("flc{pid}"),
            clean_ns: format!("fld{pid}"),
            lossy: None,
            server_lossy: lossy(2),
            server_clean: clean(2),
            device_sources: (0..SOURCES).map(|i| lossy(10 + i)).collect(),
            probe_source: clean(1),
        };
        let (ns, lossy_root, lossy_ns) = (net.ns.clone(), net.lossy_root.clone(), net.lossy_ns.clone());
        let (clean_root, clean_ns) = (net.clean_root.clone(), net.clean_ns.clone());
        must(&format!("ip -n {ns} link set lo up"));
        // The clean link: a veth pair.
        must(&format!("ip link add {clean_root} type veth peer name {clean_ns}"));
        must(&format!("ip link set {clean_ns} netns {ns}"));
        must(&format!("ip addr add {}/24 dev {clean_root}", clean(1)));
        must(&format!("ip -n {ns} addr add {}/24 dev {clean_ns}", net.server_clean));
        must(&format!("ip link set {clean_root} up"));
        must(&format!("ip -n {ns} link set {clean_ns} up"));
        // The lossy link: a veth pair with netem if this kernel has netem, else a TUN pair
        // with netem's model in this process.
        let netem_probe = sh(&format!("tc qdisc add dev {clean_root} root netem delay 0ms"));
        let _ = sh(&format!("tc qdisc del dev {clean_root} root"));
        match netem_probe {
            Ok(_) => {
                must(&format!("ip link add {lossy_root} type veth peer name {lossy_ns}"));
                must(&format!("ip link set {lossy_ns} netns {ns}"));
                net.lossy = Some(Lossy::Netem);
            }
            Err(e) => {
                eprintln!("flaky_network: no netem here ({e}); the lossy link is a TUN pair impaired in userspace");
                let root =
                    open_tun(&lossy_root, None).unwrap_or_else(|e| panic!("opening TUN device {lossy_root}: {e}"));
                let inside = open_tun(&lossy_ns, Some(&ns))
                    .unwrap_or_else(|e| panic!("opening TUN device {lossy_ns} in {ns}: {e}"));
                net.lossy = Some(Lossy::Userspace(Wire::start(root, inside)));
                must(&format!("ip link set {lossy_root} txqueuelen 10000"));
                must(&format!("ip -n {ns} link set {lossy_ns} txqueuelen 10000"));
            }
        }
        let mut root_addrs = vec![lossy(1)];
        root_addrs.extend(&net.device_sources);
        for addr in root_addrs {
            must(&format!("ip addr add {addr}/24 dev {lossy_root}"));
        }
        must(&format!("ip -n {ns} addr add {}/24 dev {lossy_ns}", net.server_lossy));
        must(&format!("ip link set {lossy_root} up"));
        must(&format!("ip -n {ns} link set {lossy_ns} up"));
        net
    }

    /// Impairs the lossy link, both directions, from now on.
    fn impair(&self, how: Impairment) {
        match self.lossy.as_ref().unwrap() {
            Lossy::Netem => {
                let args = how.netem_args().join(" ");
                must(&format!("tc qdisc replace dev {} root netem {args}", self.lossy_root));
                must(&format!(
                    "ip netns exec {} tc qdisc replace dev {} root netem {args}",
                    self.ns, self.lossy_ns
                ));
            }
            Lossy::Userspace(wire) => *wire.impairment.lock().unwrap() = Some(how),
        }
    }

    fn how(&self) -> &'static str {
        match self.lossy {
            Some(Lossy::Netem) => "tc netem on both ends of a veth pair",
            _ => "netem's model applied in userspace between a TUN pair (this kernel has no netem)",
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Closing a TUN device's file removes it; deleting one end of a veth pair deletes
        // the other.
        if let Some(Lossy::Userspace(wire)) = self.lossy.take() {
            wire.stop();
        }
        let _ = sh(&format!("ip link del {}", self.lossy_root));
        let _ = sh(&format!("ip link del {}", self.clean_root));
        let _ = sh(&format!("ip netns del {}", self.ns));
    }
}

/// Opens a new TUN device (IP packets, no extra header), in the namespace `ns` if given.
fn open_tun(name: &str, ns: Option<&str>) -> std::io::Result<OwnedFd> {
    const TUNSETIFF: u64 = 0x4004_54ca;
    const IFF_TUN: i16 = 0x0001;
    const IFF_NO_PI: i16 = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }
    let name = name.to_string();
    let ns = ns.map(|ns| format!("/run/netns/{ns}"));
    // A thread of its own, since entering a namespace changes the calling thread: the
    // device is made in the namespace of the thread that makes it, and its file works
    // from anywhere.
    std::thread::spawn(move || {
        if let Some(path) = ns {
            let file = std::fs::File::open(&path)?;
            // SAFETY: setns on a namespace file we hold open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: open(2) with a C string literal.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a file descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut request = IfReq {
            name: [0; 16],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF takes a struct ifreq, which IfReq lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut request) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    })
    .join()
    .unwrap()
}

/// Two threads carrying IP packets between the TUN devices, one per direction, each
/// dropping, delaying and reordering them as netem would with the current [`Impairment`]
/// (none: passed on at once): loss is independent per packet; a `reorder` fraction
/// (correlated with the previous draw, as netem's `get_crandom`) goes out at once, the
/// others after `delay` ± `jitter` (uniform), which also reorders them among themselves.
struct Wire {
    impairment: Arc<std::sync::Mutex<Option<Impairment>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Packets carried and dropped, both directions.
    carried: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl Wire {
    fn start(root: OwnedFd, inside: OwnedFd) -> Wire {
        let (root, inside) = (Arc::new(root), Arc::new(inside));
        let impairment = Arc::new(std::sync::Mutex::new(None));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (carried, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads = [(root.clone(), inside.clone(), 1), (inside, root, 2)]
            .into_iter()
            .map(|(from, to, seed)| {
                let (impairment, stop) = (impairment.clone(), stop.clone());
                let (carried, dropped) = (carried.clone(), dropped.clone());
                std::thread::spawn(move || forward(&from, &to, &impairment, &stop, &carried, &dropped, seed))
            })
            .collect();
        Wire {
            impairment,
            stop,
            threads,
            carried,
            dropped,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn forward(
    from: &OwnedFd,
    to: &OwnedFd,
    impairment: &std::sync::Mutex<Option<Impairment>>,
    stop: &std::sync::atomic::AtomicBool,
    carried: &AtomicU64,
    dropped: &AtomicU64,
    seed: u64,
) {
    use std::cmp::Reverse;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut in_flight: std::collections::BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = Default::default();
    let mut sequence = 0u64;
    let mut last_reorder_draw = 0.0f64;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while in_flight.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            let Reverse((_, _, packet)) = in_flight.pop().unwrap();
            // SAFETY: writes one packet from a live buffer to a TUN device we own.
            unsafe { libc::write(to.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            carried.fetch_add(1, Ordering::Relaxed);
        }
        let wait_ms = in_flight.peek().map_or(20, |Reverse((at, _, _))| {
            at.saturating_duration_since(now).as_millis().clamp(1, 20) as i32
        });
        let mut poll = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one descriptor we own.
        if unsafe { libc::poll(&mut poll, 1, wait_ms) } <= 0 {
            continue;
        }
        loop {
            // SAFETY: reads into a buffer of the given length; the descriptor is non-blocking.
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let now = Instant::now();
            let how = *impairment.lock().unwrap();
            let at = match how {
                None => now,
                Some(how) => {
                    if rng.gen::<f64>() < how.loss {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let rho = how.reorder_correlation;
                    last_reorder_draw = rng.gen::<f64>() * (1.0 - rho) + last_reorder_draw * rho;
                    if last_reorder_draw < how.reorder {
                        now
                    } else {
                        let low = how.delay.saturating_sub(how.jitter);
                        now + low + (how.delay + how.jitter - low).mul_f64(rng.gen::<f64>())
                    }
                }
            };
            sequence += 1;
            in_flight.push(Reverse((at, sequence, buf[..n as usize].to_vec())));
        }
    }
}

/// Removes the namespaces and links of earlier runs whose process is gone (killed before
/// its cleanup could run). Only this test's own names are touched.
fn remove_leftovers() {
    let Ok(list) = sh("ip netns list") else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sh(&format!("ip link del fla{pid}"));
        let _ = sh(&format!("ip link del flc{pid}"));
        let _ = sh(&format!("ip netns del {name}"));
    }
}

/// Two /24s, 10.b.c.0 and 10.b.(c+1).0, derived from the pid (so concurrent runs differ)
/// and not already in use on this host.
fn free_subnets(pid: u32) -> (u8, u8) {
    let used = format!(
        "{}{}",
        sh("ip -4 -o addr show").unwrap_or_default(),
        sh("ip -4 route show table all").unwrap_or_default()
    );
    for k in 0..64u32 {
        let r = (pid + k * 977) % 8192;
        let (b, c) = ((64 + r / 128) as u8, ((r % 128) * 2) as u8);
        if !used.contains(&format!("10.{b}.{c}.")) && !used.contains(&format!("10.{b}.{}.", c + 1)) {
            return (b, c);
        }
    }
    panic!("no free 10.x.y.0/24 pair for the test network");
}

// ---------------------------------------------------------------------------------------
// chatd, as a process inside the namespace.
// ---------------------------------------------------------------------------------------

struct Chatd {
    child: tokio::process::Child,
    mqtt_port: u16,
    api_port: u16,
    client_id: String,
    client_secret: String,
    log: PathBuf,
}

impl Chatd {
    /// chatd's warn-or-worse log lines (RUST_LOG=warn unless CHILD_LOG says otherwise).
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.log_lines();
            eprintln!("flaky_network: chatd's log ({} lines), last 40:", lines.len());
            for line in lines.iter().rev().take(40).rev() {
                eprintln!("  {line}");
            }
        }
        if let Ok(keep) = std::env::var("FLAKY_NETWORK_LOG") {
            let _ = std::fs::copy(&self.log, &keep);
        }
        // The child itself is killed when it is dropped (kill_on_drop).
    }
}

/// Starts the binary inside the namespace, listening on all of its addresses on free
/// ports (it prints which), with SQLite in `dir`, and reads the dev app's credentials.
async fn start_chatd(net: &Net, dir: &Path) -> Chatd {
    let config = dir.join("chatd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\ndev_app = true\n\n[mqtt]\ntcp = \"0.0.0.0:0\"\nws = \"\"\n\n[api]\nlisten = \"0.0.0.0:0\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let log = dir.join("chatd.log");
    let mut command = tokio::process::Command::new("ip");
    command
        .args(["netns", "exec", &net.ns, env!("CARGO_BIN_EXE_chatd"), "--config"])
        .arg(&config);
    // The test's own environment must not point chatd elsewhere (scripts/test.sh sets
    // DATABASE_URL for PostgreSQL).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CHATD_") || key == "DATABASE_URL" {
            command.env_remove(&*key);
        }
    }
    command
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or("warn,rumqttd=off".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe. `ip netns exec` execs chatd in place, so chatd
    // is killed if this test process dies without running its cleanup.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("`ip netns exec … chatd` starts");
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let banner = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = reader.next_line().await {
            let done = line.starts_with("REST API:");
            lines.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    if banner != Ok(true) {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("chatd did not print its addresses: stdout {lines:?}, log:\n{log}");
    }
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
    let value = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no '{prefix}' in {lines:?}"))
    };
    let port = |prefix: &str| -> u16 { value(prefix).rsplit(':').next().unwrap().parse().unwrap() };
    Chatd {
        child,
        mqtt_port: port("MQTT (TCP):"),
        api_port: port("REST API:"),
        client_id: value("client_id:"),
        client_secret: value("client_secret:"),
        log,
    }
}

async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: &Value) -> Value {
    let mut req = http.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "POST {url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

// ---------------------------------------------------------------------------------------
// Devices.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Connect and stay connected.
    Connect,
    /// Senders send.
    Send,
    /// No new messages; the unacked ones are retried until acked.
    Drain,
    /// Each storm sender sends one last message, expected live at its recipient.
    LiveRound,
    /// Every device syncs until there is no more.
    FinalSync,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Control {
    phase: Phase,
    /// Bumped when the lossy link is cut: lossy-link devices drop their connection.
    cut: u32,
}

/// What every device counts into (the numbers the run prints) and what the test waits on.
#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    tcp_attempts: AtomicU64,
    tcp_timeouts: AtomicU64,
    tcp_errors: AtomicU64,
    closed_before_connack: AtomicU64,
    connack_refused: AtomicU64,
    mqtt_timeouts: AtomicU64,
    /// Connections lost other than by the cut (read/write errors, ping timeouts), and why.
    lost: AtomicU64,
    lost_why: std::sync::Mutex<BTreeMap<String, u64>>,
    publishes: AtomicU64,
    retries: AtomicU64,
    doubles: AtomicU64,
    acked: AtomicU64,
    unacked: AtomicI64,
    syncs: AtomicU64,
    gap_syncs: AtomicU64,
    rate_limited: AtomicU64,
    /// Retryable error ops by code and what they answered.
    retryable_why: std::sync::Mutex<BTreeMap<String, u64>>,
    storm_back: AtomicUsize,
    live_round_received: AtomicUsize,
    final_done: AtomicUsize,
}

/// Who a device is and how it behaves.
struct Spec {
    proto: Proto,
    user: String,
    token: String,
    client_id: String,
    /// Where it connects from and to.
    source: Ipv4Addr,
    server: SocketAddrV4,
    /// On the lossy link: drops its connection when the link is cut.
    lossy: bool,
    /// Whom it sends to and how often (none: receives only).
    sends: Option<(Duration, Recipients)>,
    /// Sends the last message of `Phase::LiveRound`.
    live_round: bool,
    start_delay: Duration,
    seed: u64,
}

#[derive(Clone)]
enum Recipients {
    /// A random one of these, never itself.
    Any(Arc<Vec<String>>),
    One(String),
}

/// One message a device sends: what, to whom, and what became of it.
struct Outgoing {
    cid: String,
    to: String,
    text: String,
    /// Published twice back to back on purpose.
    double: bool,
    /// The connection (by number) it was last published on, and when.
    published_on: u64,
    last_published: Option<Instant>,
    first_published: Option<Instant>,
    publishes: u32,
    /// Every ack's message id (a repeated cid gets its ack again).
    acks: Vec<String>,
    acked_at: Option<Instant>,
}

/// A message received from someone else.
struct Incoming {
    from: String,
    text: String,
    /// It first arrived live (a `msg` publish), not in a `synced` page.
    live: bool,
}

/// A device's whole state, kept across its connections and handed back at the end.
struct Device {
    spec: Spec,
    rng: StdRng,
    outbox: String,
    inbox_topic: String,
    out: Vec<Outgoing>,
    by_cid: HashMap<String, usize>,
    next_send: Option<Instant>,
    live_sent: bool,
    /// Inbox positions seen (from acks, live messages and sync pages): useq -> message id.
    inbox: BTreeMap<i64, String>,
    useq_of: HashMap<String, i64>,
    contiguous: i64,
    highest: i64,
    received: HashMap<String, Incoming>,
    /// `msg`s from others as they arrived, duplicates included.
    deliveries: u64,
    /// Its own messages as seen in its inbox: text -> message ids.
    own_seen: HashMap<String, HashSet<String>>,
    errors: Vec<String>,
    /// Connections made so far; connection number of the current one.
    connections: u64,
    /// The cut this device has last seen.
    cut_seen: u32,
    /// When it was first connected, and back after the cut.
    first_connected: Option<Instant>,
    storm_back: Option<Instant>,
    /// The connection it had when the live round began, if it had one then (subscribed
    /// before: that round's messages must come to it live).
    connection_at_live_round: Option<u64>,
    /// When its connections began (SUBACK), for the record.
    connected_at: Vec<Instant>,
    sync_pending: Option<(String, Instant)>,
    sync_at: Option<Instant>,
    syncs: u64,
    /// The first sync of the final catch-up, by number, and whether it finished.
    final_from: Option<u64>,
    final_done: bool,
    next_pkid: u16,
}

enum End {
    Done,
    Cut,
    Lost(String),
}

enum OpenError {
    TcpTimeout,
    Tcp,
    ClosedBeforeConnack,
    Refused,
    MqttTimeout,
}

impl Device {
    fn new(spec: Spec) -> Device {
        let outbox = format!("chat/demo/chat/u/{}/out", spec.user);
        let inbox_topic = format!("chat/demo/chat/u/{}/in", spec.user);
        Device {
            rng: StdRng::seed_from_u64(spec.seed),
            spec,
            outbox,
            inbox_topic,
            out: Vec::new(),
            by_cid: HashMap::new(),
            next_send: None,
            live_sent: false,
            inbox: BTreeMap::new(),
            useq_of: HashMap::new(),
            contiguous: 0,
            highest: 0,
            received: HashMap::new(),
            deliveries: 0,
            own_seen: HashMap::new(),
            errors: Vec::new(),
            connections: 0,
            cut_seen: 0,
            first_connected: None,
            storm_back: None,
            connection_at_live_round: None,
            connected_at: Vec::new(),
            sync_pending: None,
            sync_at: None,
            syncs: 0,
            final_from: None,
            final_done: false,
            next_pkid: 0,
        }
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    fn publish(&mut self, out: &mut BytesMut, payload: String, stats: &Stats) {
        let pkid = self.pkid();
        self.spec.proto.publish(out, &self.outbox, pkid, payload);
        stats.publishes.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that inbox position `useq` holds message `id`; the same position must never
    /// name two messages, nor a message two positions.
    fn note_position(&mut self, useq: i64, id: &str) {
        if let Some(known) = self.inbox.get(&useq) {
            if known != id {
                self.errors.push(format!("useq {useq} was message {known}, now {id}"));
            }
            return;
        }
        if let Some(other) = self.useq_of.get(id) {
            self.errors
                .push(format!("message {id} at useq {other} and at useq {useq}"));
        }
        self.inbox.insert(useq, id.to_string());
        self.useq_of.insert(id.to_string(), useq);
        self.highest = self.highest.max(useq);
        while self.inbox.contains_key(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }

    /// A `msg`, live or from a `synced` page.
    fn on_msg(&mut self, m: &Value, live: bool, stats: &Stats) {
        let (Some(id), Some(useq), Some(from), Some(to), Some(text)) = (
            m["id"].as_str(),
            m["useq"].as_i64(),
            m["from"].as_str(),
            m["to"].as_str(),
            m["body"]["msg"].as_str(),
        ) else {
            self.errors.push(format!("unexpected msg {m}"));
            return;
        };
        self.note_position(useq, id);
        if from == self.spec.user {
            // Its own message, as its inbox shows it (sync).
            self.own_seen
                .entry(text.to_string())
                .or_default()
                .insert(id.to_string());
            return;
        }
        if to != self.spec.user || m["chat"] != "user" {
            self.errors.push(format!("a msg not for {}: {m}", self.spec.user));
            return;
        }
        self.deliveries += 1;
        match self.received.get(id) {
            Some(known) => {
                if known.from != from || known.text != text {
                    self.errors.push(format!("message {id} came back different: {m}"));
                }
            }
            None => {
                if text.starts_with("live:") {
                    stats.live_round_received.fetch_add(1, Ordering::Relaxed);
                }
                self.received.insert(
                    id.to_string(),
                    Incoming {
                        from: from.to_string(),
                        text: text.to_string(),
                        live,
                    },
                );
            }
        }
    }

    /// Everything the server sends on the inbox.
    fn on_inbox(&mut self, payload: &[u8], stats: &Stats, now: Instant) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            self.errors
                .push(format!("not JSON: {}", String::from_utf8_lossy(payload)));
            return;
        };
        match v["op"].as_str().unwrap_or_default() {
            "ack" => {
                let (Some(cid), Some(id)) = (v["cid"].as_str(), v["id"].as_str()) else {
                    self.errors.push(format!("bad ack {v}"));
                    return;
                };
                let Some(&i) = self.by_cid.get(cid) else {
                    self.errors.push(format!("ack for a cid never sent: {v}"));
                    return;
                };
                let o = &mut self.out[i];
                o.acks.push(id.to_string());
                self.own_seen.entry(o.text.clone()).or_default().insert(id.to_string());
                if o.acked_at.is_none() {
                    o.acked_at = Some(now);
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    stats.unacked.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(useq) = v["useq"].as_i64() {
                    self.note_position(useq, id);
                }
            }
            "msg" => {
                let useq = v["useq"].as_i64().unwrap_or(0);
                self.on_msg(&v, true, stats);
                // A gap: something was missed live (it was sent while this device was away).
                if useq > self.contiguous + 1 && self.sync_pending.is_none() && self.sync_at.is_none() {
                    self.sync_at = Some(now);
                    stats.gap_syncs.fetch_add(1, Ordering::Relaxed);
                }
            }
            "synced" => {
                let number = v["cid"]
                    .as_str()
                    .and_then(|c| c.rsplit_once("-s"))
                    .and_then(|(_, n)| n.parse::<u64>().ok());
                for m in v["msgs"].as_array().into_iter().flatten() {
                    self.on_msg(m, false, stats);
                }
                if self.sync_pending.as_ref().map(|(c, _)| c.as_str()) != v["cid"].as_str() {
                    // An answer to a sync given up on (re-sent after a timeout): its
                    // messages count, its paging does not.
                    return;
                }
                self.sync_pending = None;
                if v["more"] == true {
                    self.sync_at = Some(now);
                } else if self.highest > self.contiguous {
                    // A live message beyond what this page reached: ask again, shortly.
                    self.sync_at = Some(now + Duration::from_millis(300));
                } else if let Some(from) = self.final_from {
                    if number.is_some_and(|n| n >= from) {
                        if !self.final_done {
                            self.final_done = true;
                            stats.final_done.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        // This sync began before the final catch-up did.
                        self.sync_at = Some(now);
                    }
                }
            }
            "error" => {
                let cid = v["cid"].as_str().unwrap_or_default();
                let code = v["code"].as_str().unwrap_or_default();
                let retryable = matches!(code, "rate_limited" | "internal");
                if retryable {
                    stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let what = if self.by_cid.contains_key(cid) { "send" } else { "sync" };
                    let message = v["message"].as_str().unwrap_or_default();
                    *stats
                        .retryable_why
                        .lock()
                        .unwrap()
                        .entry(format!("{code} on {what}: {message}"))
                        .or_default() += 1;
                }
                if let Some(&i) = self.by_cid.get(cid).filter(|_| retryable) {
                    // Published again in about a second.
                    self.out[i].last_published = Some(now - RETRY_AFTER + Duration::from_secs(1));
                } else if self.sync_pending.as_ref().is_some_and(|(c, _)| c == cid) && retryable {
                    self.sync_pending = None;
                    self.sync_at = Some(now + Duration::from_millis(500));
                } else {
                    self.errors.push(format!("error from the server: {v}"));
                }
            }
            _ => self.errors.push(format!("unexpected op {v}")),
        }
    }

    /// New messages that are due, for a sender.
    fn make_messages(&mut self, phase: Phase, now: Instant, stats: &Stats) {
        let Some((every, recipients)) = self.spec.sends.clone() else {
            return;
        };
        let pick = |rng: &mut StdRng, me: &str| match &recipients {
            Recipients::One(to) => to.clone(),
            Recipients::Any(all) => loop {
                let to = &all[rng.gen_range(0..all.len())];
                if to != me {
                    return to.clone();
                }
            },
        };
        if phase == Phase::Send {
            let next = *self
                .next_send
                .get_or_insert_with(|| now + every.mul_f64(self.rng.gen_range(0.0..1.0)));
            let mut next = next;
            while next <= now {
                let n = self.out.len();
                let to = pick(&mut self.rng, &self.spec.user);
                let cid = format!("{}-m{n}", self.spec.client_id);
                self.add(cid, to, format!("{}#{n}", self.spec.client_id), n == 0, stats);
                next += every.mul_f64(self.rng.gen_range(0.8..1.2));
            }
            self.next_send = Some(next);
        }
        if phase == Phase::LiveRound && self.spec.live_round && !self.live_sent {
            self.live_sent = true;
            let to = pick(&mut self.rng, &self.spec.user);
            let n = self.out.len();
            let cid = format!("{}-m{n}", self.spec.client_id);
            self.add(cid, to, format!("live:{}", self.spec.client_id), false, stats);
        }
    }

    fn add(&mut self, cid: String, to: String, text: String, double: bool, stats: &Stats) {
        self.by_cid.insert(cid.clone(), self.out.len());
        self.out.push(Outgoing {
            cid,
            to,
            text,
            double,
            published_on: 0,
            last_published: None,
            first_published: None,
            publishes: 0,
            acks: Vec::new(),
            acked_at: None,
        });
        stats.unacked.fetch_add(1, Ordering::Relaxed);
    }

    /// What a connected device does every tick: send what is due, retry what is unacked,
    /// sync when it should.
    fn tick(&mut self, phase: Phase, now: Instant, out: &mut BytesMut, stats: &Stats) {
        self.make_messages(phase, now, stats);
        let connection = self.connections;
        let mut to_publish = Vec::new();
        for (i, o) in self.out.iter_mut().enumerate() {
            if o.acked_at.is_some() {
                continue;
            }
            let due =
                o.published_on != connection || o.last_published.is_some_and(|t| now.duration_since(t) >= RETRY_AFTER);
            if !due {
                continue;
            }
            if o.publishes > 0 {
                stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let times = if o.double && o.publishes == 0 { 2 } else { 1 };
            if times == 2 {
                stats.doubles.fetch_add(1, Ordering::Relaxed);
            }
            o.publishes += times;
            o.published_on = connection;
            o.last_published = Some(now);
            o.first_published.get_or_insert(now);
            for _ in 0..times {
                to_publish.push(i);
            }
        }
        for i in to_publish {
            let o = &self.out[i];
            let envelope =
                json!({"op": "send", "cid": o.cid, "chat": "user", "to": o.to, "type": "txt", "body": {"msg": o.text}});
            self.publish(out, envelope.to_string(), stats);
        }
        if phase == Phase::FinalSync && self.final_from.is_none() {
            // The final catch-up starts with a fresh sync (after whatever is pending).
            self.final_from = Some(self.syncs + 1);
            if self.sync_pending.is_none() {
                self.sync_at = Some(now);
            }
        }
        if self
            .sync_pending
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) > Duration::from_secs(15))
        {
            self.sync_pending = None;
            self.sync_at = Some(now);
        }
        if self.sync_pending.is_none() && self.sync_at.is_some_and(|at| at <= now) {
            self.sync_at = None;
            self.syncs += 1;
            let cid = format!("{}-s{}", self.spec.client_id, self.syncs);
            let envelope = json!({"op": "sync", "cid": cid, "after": self.contiguous, "limit": 200});
            self.sync_pending = Some((cid, now));
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.publish(out, envelope.to_string(), stats);
        }
    }

    /// TCP connect, CONNECT, SUBSCRIBE to the inbox.
    async fn open(&self) -> Result<(TcpStream, BytesMut), OpenError> {
        let proto = self.spec.proto;
        let socket = TcpSocket::new_v4().map_err(|_| OpenError::Tcp)?;
        socket
            .bind(SocketAddr::new(self.spec.source.into(), 0))
            .map_err(|_| OpenError::Tcp)?;
        let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(self.spec.server.into()))
            .await
            .map_err(|_| OpenError::TcpTimeout)?
            .map_err(|_| OpenError::Tcp)?;
        let _ = stream.set_nodelay(true);
        let mut out = BytesMut::new();
        proto.connect(&mut out, &self.spec.client_id, &self.spec.user, &self.spec.token);
        let mut buf = BytesMut::new();
        let handshake = async {
            stream
                .write_all(&out)
                .await
                .map_err(|_| OpenError::ClosedBeforeConnack)?;
            match read_packet(proto, &mut stream, &mut buf).await {
                Some(In::ConnAck(true)) => {}
                Some(_) => return Err(OpenError::Refused),
                None => return Err(OpenError::ClosedBeforeConnack),
            }
            out.clear();
            proto.subscribe(&mut out, &self.inbox_topic);
            stream.write_all(&out).await.map_err(|_| OpenError::MqttTimeout)?;
            loop {
                match read_packet(proto, &mut stream, &mut buf).await {
                    Some(In::SubAck(true)) => return Ok(()),
                    Some(In::SubAck(false)) => return Err(OpenError::Refused),
                    Some(_) => {}
                    None => return Err(OpenError::MqttTimeout),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), handshake)
            .await
            .map_err(|_| OpenError::MqttTimeout)??;
        Ok((stream, buf))
    }

    /// One connection, until it ends.
    async fn session(
        &mut self,
        mut stream: TcpStream,
        mut buf: BytesMut,
        control: &mut watch::Receiver<Control>,
        stats: &Stats,
    ) -> End {
        let proto = self.spec.proto;
        // Subscribed (SUBACK) before this: a phase that began after it found it connected.
        let phase_at_connect = control.borrow().phase;
        let mut out = BytesMut::new();
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(self.rng.gen_range(0..200)),
            Duration::from_millis(200),
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // MQTT 5: the topic aliases the server set on this connection, and the publishes
        // it sent that this device has not acknowledged yet (at most its Receive Maximum).
        let mut aliases: HashMap<u16, String> = HashMap::new();
        let (mut received, mut acknowledged, mut pubacks_queued) = (0u64, 0u64, 0u64);
        // On every connect: catch up, and publish again whatever is unacked.
        self.sync_pending = None;
        self.sync_at = Some(Instant::now());
        let phase = control.borrow().phase;
        self.tick(phase, Instant::now(), &mut out, stats);
        loop {
            let c = *control.borrow();
            if c.phase == Phase::Done {
                return End::Done;
            }
            if self.spec.lossy && c.cut != self.cut_seen {
                self.cut_seen = c.cut;
                return End::Cut;
            }
            if c.phase == Phase::LiveRound
                && phase_at_connect < Phase::LiveRound
                && self.connection_at_live_round.is_none()
            {
                self.connection_at_live_round = Some(self.connections);
            }
            if !out.is_empty() {
                match tokio::time::timeout(Duration::from_secs(10), stream.write_all(&out)).await {
                    Ok(Ok(())) => {
                        out.clear();
                        acknowledged += pubacks_queued;
                        pubacks_queued = 0;
                    }
                    _ => return End::Lost("write failed".into()),
                }
            }
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) | Err(_) => return End::Lost("closed by the server".into()),
                        Ok(_) => {}
                    }
                    let now = Instant::now();
                    last_heard = now;
                    loop {
                        match proto.decode(&mut buf) {
                            Ok(Some(In::Publish { pkid, qos1, topic, alias, payload })) => {
                                if qos1 {
                                    received += 1;
                                    if let Proto::V5 { receive_max: Some(max), .. } = proto {
                                        if received - acknowledged > u64::from(max) {
                                            self.errors.push(format!(
                                                "the server sent {} publishes unacknowledged, over this device's Receive Maximum {max}",
                                                received - acknowledged
                                            ));
                                        }
                                    }
                                    proto.puback(&mut out, pkid);
                                    pubacks_queued += 1;
                                }
                                let topic = match (topic.is_empty(), alias) {
                                    (false, Some(alias)) => {
                                        aliases.insert(alias, topic.clone());
                                        topic
                                    }
                                    (false, None) => topic,
                                    (true, Some(alias)) => match aliases.get(&alias) {
                                        Some(topic) => topic.clone(),
                                        None => {
                                            self.errors.push(format!("topic alias {alias} never set on this connection"));
                                            continue;
                                        }
                                    },
                                    (true, None) => {
                                        self.errors.push("a publish without topic or alias".into());
                                        continue;
                                    }
                                };
                                if topic == self.inbox_topic {
                                    self.on_inbox(&payload, stats, now);
                                } else {
                                    self.errors.push(format!("publish on {topic}"));
                                }
                            }
                            Ok(Some(In::PingResp)) => ping_sent = None,
                            Ok(Some(In::Disconnect(reason))) => return End::Lost(format!("DISCONNECT {reason:#04x}")),
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => return End::Lost(format!("bad packet: {e}")),
                        }
                    }
                }
                changed = control.changed() => {
                    // Looked at at the top of the loop.
                    if changed.is_err() {
                        return End::Done;
                    }
                }
                _ = ticks.tick() => {
                    let now = Instant::now();
                    if let Some(sent) = ping_sent {
                        if now.duration_since(sent) > Duration::from_secs(20) {
                            return End::Lost("no PINGRESP in 20 s".into());
                        }
                    } else if now.duration_since(last_heard) > Duration::from_secs(10) {
                        proto.pingreq(&mut out);
                        ping_sent = Some(now);
                    }
                    let phase = control.borrow().phase;
                    self.tick(phase, now, &mut out, stats);
                }
            }
        }
    }
}

/// The MQTT version a device speaks, and for MQTT 5 what it asks for at CONNECT.
#[derive(Debug, Clone, Copy)]
enum Proto {
    V4,
    V5 {
        /// Receive Maximum: the server may leave at most this many publishes to it
        /// unacknowledged (the rest wait in the gate).
        receive_max: Option<u16>,
        /// Topic Alias Maximum: the server sends the inbox as a two-byte alias after the
        /// first publish of each connection.
        topic_alias_max: Option<u16>,
    },
}

/// What a device reads, whatever its MQTT version.
enum In {
    ConnAck(bool),
    SubAck(bool),
    Publish {
        pkid: u16,
        qos1: bool,
        /// Empty when only the alias is given.
        topic: String,
        alias: Option<u16>,
        payload: bytes::Bytes,
    },
    PingResp,
    Disconnect(u8),
    Other,
}

impl Proto {
    fn connect(self, out: &mut BytesMut, client_id: &str, user: &str, token: &str) {
        match self {
            Proto::V4 => {
                let mut connect = v4::Connect::new(client_id);
                connect.keep_alive = KEEP_ALIVE;
                connect.set_login(user, token);
                v4::Packet::Connect(connect).write(out, usize::MAX).unwrap();
            }
            Proto::V5 {
                receive_max,
                topic_alias_max,
            } => {
                let mut properties = v5::ConnectProperties::new();
                properties.receive_maximum = receive_max;
                properties.topic_alias_max = topic_alias_max;
                let connect = v5::Connect {
                    keep_alive: KEEP_ALIVE,
                    client_id: client_id.into(),
                    clean_start: true,
                    properties: Some(properties),
                };
                let login = v5::Login {
                    username: user.into(),
                    password: token.into(),
                };
                v5::Packet::Connect(connect, None, Some(login))
                    .write(out, None)
                    .unwrap();
            }
        }
    }

    fn subscribe(self, out: &mut BytesMut, topic: &str) {
        match self {
            Proto::V4 => {
                let mut subscribe = v4::Subscribe::new(topic, QoS::AtLeastOnce);
                subscribe.pkid = 1;
                v4::Packet::Subscribe(subscribe).write(out, usize::MAX).unwrap();
            }
            Proto::V5 { .. } => {
                let mut subscribe = v5::Subscribe::new(v5::Filter::new(topic, V5QoS::AtLeastOnce), None);
                subscribe.pkid = 1;
                v5::Packet::Subscribe(subscribe).write(out, None).unwrap();
            }
        }
    }

    fn publish(self, out: &mut BytesMut, topic: &str, pkid: u16, payload: String) {
        match self {
            Proto::V4 => {
                let mut publish = v4::Publish::new(topic, QoS::AtLeastOnce, payload);
                publish.pkid = pkid;
                v4::Packet::Publish(publish).write(out, usize::MAX).unwrap();
            }
            Proto::V5 { .. } => {
                let mut publish = v5::Publish::new(topic, V5QoS::AtLeastOnce, payload, None);
                publish.pkid = pkid;
                v5::Packet::Publish(publish).write(out, None).unwrap();
            }
        }
    }

    fn puback(self, out: &mut BytesMut, pkid: u16) {
        match self {
            Proto::V4 => v4::Packet::PubAck(v4::PubAck::new(pkid))
                .write(out, usize::MAX)
                .map(drop)
                .unwrap(),
            Proto::V5 { .. } => v5::Packet::PubAck(v5::PubAck::new(pkid, None))
                .write(out, None)
                .map(drop)
                .unwrap(),
        }
    }

    fn pingreq(self, out: &mut BytesMut) {
        match self {
            Proto::V4 => v4::Packet::PingReq.write(out, usize::MAX).map(drop).unwrap(),
            Proto::V5 { .. } => v5::Packet::PingReq(v5::PingReq).write(out, None).map(drop).unwrap(),
        }
    }

    /// The next whole packet in `buf`, None if it is not all there yet.
    fn decode(self, buf: &mut BytesMut) -> Result<Option<In>, String> {
        match self {
            Proto::V4 => match v4::Packet::read(buf, 1 << 20) {
                Ok(v4::Packet::ConnAck(a)) => Ok(Some(In::ConnAck(a.code == v4::ConnectReturnCode::Success))),
                Ok(v4::Packet::SubAck(a)) => Ok(Some(In::SubAck(
                    !a.return_codes.is_empty()
                        && a.return_codes
                            .iter()
                            .all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))),
                ))),
                Ok(v4::Packet::Publish(p)) => Ok(Some(In::Publish {
                    pkid: p.pkid,
                    qos1: p.qos == QoS::AtLeastOnce,
                    topic: p.topic,
                    alias: None,
                    payload: p.payload,
                })),
                Ok(v4::Packet::PingResp) => Ok(Some(In::PingResp)),
                Ok(_) => Ok(Some(In::Other)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            Proto::V5 { .. } => {
                // rumqttc cannot parse a DISCONNECT with a reason code and no properties,
                // which is what the gate writes: `E0 01 <reason>` (or `E0 00`).
                if buf.first() == Some(&0xE0) && buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1]) {
                    let reason = if buf[1] > 0 { buf[2] } else { 0 };
                    let _ = buf.split_to(2 + usize::from(buf[1]));
                    return Ok(Some(In::Disconnect(reason)));
                }
                match v5::Packet::read(buf, Some(1 << 20)) {
                    Ok(v5::Packet::ConnAck(a)) => Ok(Some(In::ConnAck(a.code == v5::ConnectReturnCode::Success))),
                    Ok(v5::Packet::SubAck(a)) => Ok(Some(In::SubAck(
                        !a.return_codes.is_empty()
                            && a.return_codes
                                .iter()
                                .all(|c| matches!(c, v5::SubscribeReasonCode::Success(_))),
                    ))),
                    Ok(v5::Packet::Publish(p)) => Ok(Some(In::Publish {
                        pkid: p.pkid,
                        qos1: p.qos == V5QoS::AtLeastOnce,
                        topic: String::from_utf8(p.topic.to_vec()).map_err(|e| e.to_string())?,
                        alias: p.properties.and_then(|props| props.topic_alias),
                        payload: p.payload,
                    })),
                    Ok(v5::Packet::PingResp(_)) => Ok(Some(In::PingResp)),
                    Ok(v5::Packet::Disconnect(d)) => Ok(Some(In::Disconnect(d.reason_code as u8))),
                    Ok(_) => Ok(Some(In::Other)),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

/// The next packet, or None when the connection closes (or sends something unreadable).
async fn read_packet(proto: Proto, stream: &mut TcpStream, buf: &mut BytesMut) -> Option<In> {
    loop {
        match proto.decode(buf) {
            Ok(Some(p)) => return Some(p),
            Ok(None) => match stream.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            },
            Err(_) => return None,
        }
    }
}

/// Waits until the test is done or (for a lossy-link device) the link is cut again.
async fn cut_or_done(control: &mut watch::Receiver<Control>, lossy: bool, cut_seen: u32) {
    loop {
        {
            let c = *control.borrow_and_update();
            if c.phase == Phase::Done || (lossy && c.cut != cut_seen) {
                return;
            }
        }
        if control.changed().await.is_err() {
            return;
        }
    }
}

/// A device's life: connect (with jittered backoff), serve, reconnect, until Done.
async fn run_device(mut dev: Device, mut control: watch::Receiver<Control>, stats: Arc<Stats>) -> Device {
    tokio::time::sleep(dev.spec.start_delay).await;
    let mut failures = 0u32;
    loop {
        let c = *control.borrow();
        if c.phase == Phase::Done {
            return dev;
        }
        if dev.spec.lossy {
            dev.cut_seen = c.cut;
        }
        stats.tcp_attempts.fetch_add(1, Ordering::Relaxed);
        let opened = tokio::select! {
            opened = dev.open() => Some(opened),
            _ = cut_or_done(&mut control, dev.spec.lossy, dev.cut_seen) => None,
        };
        let (stream, buf) = match opened {
            None => continue,
            Some(Ok(connection)) => connection,
            Some(Err(e)) => {
                let counter = match e {
                    OpenError::TcpTimeout => &stats.tcp_timeouts,
                    OpenError::Tcp => &stats.tcp_errors,
                    OpenError::ClosedBeforeConnack => &stats.closed_before_connack,
                    OpenError::Refused => &stats.connack_refused,
                    OpenError::MqttTimeout => &stats.mqtt_timeouts,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                let backoff = Duration::from_millis(250u64 << failures.min(4)).mul_f64(dev.rng.gen_range(0.5..1.0));
                let cut_seen = dev.cut_seen;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cut_or_done(&mut control, dev.spec.lossy, cut_seen) => {}
                }
                continue;
            }
        };
        failures = 0;
        dev.connections += 1;
        let now = Instant::now();
        dev.connected_at.push(now);
        dev.first_connected.get_or_insert(now);
        if dev.spec.lossy && dev.cut_seen > 0 && dev.storm_back.is_none() {
            dev.storm_back = Some(now);
            stats.storm_back.fetch_add(1, Ordering::Relaxed);
        }
        stats.connected.fetch_add(1, Ordering::Relaxed);
        let end = dev.session(stream, buf, &mut control, &stats).await;
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Done => return dev,
            End::Cut => {}
            End::Lost(why) => {
                stats.lost.fetch_add(1, Ordering::Relaxed);
                let key = format!("{why} ({:?})", dev.spec.proto);
                *stats.lost_why.lock().unwrap().entry(key).or_default() += 1;
                if why.starts_with("bad packet") {
                    dev.errors.push(why);
                }
                tokio::time::sleep(Duration::from_millis(dev.rng.gen_range(100..500))).await;
            }
        }
    }
}

/// Every user's presence, as the server keeps it (retained): a device of `me` on the
/// clean link subscribes to all of their presence topics at once.
async fn read_presence(
    net: &Net,
    server: SocketAddrV4,
    me: &str,
    token: &str,
    users: &[String],
) -> HashMap<String, Value> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(net.probe_source.into(), 0)).unwrap();
    let mut stream = socket.connect(server.into()).await.expect("presence reader connects");
    let mut out = BytesMut::new();
    let mut connect = v4::Connect::new(format!("{me}-presence"));
    connect.keep_alive = KEEP_ALIVE;
    connect.set_login(me, token);
    v4::Packet::Connect(connect).write(&mut out, usize::MAX).unwrap();
    let filters = users
        .iter()
        .map(|u| v4::SubscribeFilter::new(format!("chat/demo/chat/presence/{u}"), QoS::AtLeastOnce));
    let mut subscribe = v4::Subscribe::new_many(filters);
    subscribe.pkid = 1;
    v4::Packet::Subscribe(subscribe).write(&mut out, usize::MAX).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut seen = HashMap::new();
    let read = async {
        while seen.len() < users.len() {
            match read_packet(Proto::V4, &mut stream, &mut buf).await {
                Some(In::ConnAck(ok)) => assert!(ok, "the presence reader's CONNECT was refused"),
                Some(In::SubAck(ok)) => assert!(ok, "presence subscriptions refused"),
                Some(In::Publish {
                    pkid, qos1, payload, ..
                }) => {
                    if qos1 {
                        out.clear();
                        Proto::V4.puback(&mut out, pkid);
                        stream.write_all(&out).await.unwrap();
                    }
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    seen.insert(v["user"].as_str().unwrap().to_string(), v);
                }
                Some(_) => {}
                None => panic!("the presence reader's connection closed"),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    seen
}

/// Polls until `done` holds, or panics after `limit` saying what it waited for.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool, progress: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}: {}",
            progress()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The time of day (UTC) `ago` before now, as chatd's log prints it.
fn utc_now_minus(ago: Duration) -> String {
    let t = std::time::SystemTime::now() - ago;
    let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `to - from` in seconds, negative if `to` is earlier.
fn seconds_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() - from.saturating_duration_since(to).as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_a_lossy_link_survive_a_reconnect_storm() {
    let started = Instant::now();
    // How long each step took, for the record.
    let mut steps: Vec<(&str, Duration)> = Vec::new();
    let mut step_start = Instant::now();
    let mut step = |name: &'static str| {
        steps.push((name, step_start.elapsed()));
        step_start = Instant::now();
    };
    raise_open_files_limit();
    let net = Net::create();
    let dir = tempfile::tempdir().unwrap();
    let mut chatd = start_chatd(&net, dir.path()).await;
    step("network and chatd up");
    eprintln!(
        "flaky_network: chatd in namespace {} at {} (lossy) and {} (clean), MQTT port {}, REST port {}",
        net.ns, net.server_lossy, net.server_clean, chatd.mqtt_port, chatd.api_port
    );

    // REST setup over the clean link.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let api = format!("http://{}:{}/demo/chat", net.server_clean, chatd.api_port);
    let app_token = post(
        &http,
        &format!("{api}/token"),
        None,
        &json!({"grant_type": "client_credentials", "client_id": chatd.client_id, "client_secret": chatd.client_secret}),
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i:03}")).collect();
    let probes = ["probe-a".to_string(), "probe-b".to_string()];
    let all: Vec<String> = users.iter().chain(&probes).cloned().collect();
    let setup = Instant::now();
    let created: Vec<Value> = futures_util::stream::iter(all.chunks(60))
        .map(|chunk| {
            let body: Vec<Value> = chunk.iter().map(|u| json!({"username": u, "password": "pw"})).collect();
            let (http, url, token) = (&http, format!("{api}/users"), &app_token);
            async move { post(http, &url, Some(token), &Value::Array(body)).await }
        })
        .buffer_unordered(2)
        .collect()
        .await;
    assert_eq!(created.len(), all.len().div_ceil(60));
    let users_created = setup.elapsed();
    step("users created (argon2)");
    let tokens: HashMap<String, String> = futures_util::stream::iter(all.iter().cloned())
        .map(|user| {
            let (http, url, token) = (&http, format!("{api}/token"), &app_token);
            async move {
                let grant = json!({"grant_type": "inherit", "username": user});
                let t = post(http, &url, Some(token), &grant).await["access_token"]
                    .as_str()
                    .unwrap()
                    .to_string();
                (user, t)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    step("tokens");
    eprintln!(
        "flaky_network: {} users created in {:.1?}, their tokens in {:.1?}",
        all.len(),
        users_created,
        setup.elapsed() - users_created
    );

    // The lossy link from now on.
    net.impair(LOSSY);

    let stats = Arc::new(Stats::default());
    let (control_tx, control_rx) = watch::channel(Control {
        phase: Phase::Connect,
        cut: 0,
    });
    let everyone = Arc::new(users.clone());
    let mut devices = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for d in 0..DEVICES_PER_USER {
            let i = u * DEVICES_PER_USER + d;
            let sender = d == 0;
            let spec = Spec {
                // Two devices of each user speak 3.1.1, two MQTT 5 (one of them with flow
                // control and topic aliases).
                proto: match d {
                    0 | 2 => Proto::V4,
                    1 => Proto::V5 {
                        receive_max: None,
                        topic_alias_max: None,
                    },
                    _ => Proto::V5 {
                        receive_max: Some(8),
                        topic_alias_max: Some(4),
                    },
                },
                user: user.clone(),
                token: tokens[user].clone(),
                client_id: format!("{user}-d{d}"),
                source: net.device_sources[i % net.device_sources.len()],
                server: SocketAddrV4::new(net.server_lossy, chatd.mqtt_port),
                lossy: true,
                sends: sender.then(|| (SEND_EVERY, Recipients::Any(everyone.clone()))),
                live_round: sender,
                // Apps start over a few seconds, not all in the same millisecond.
                start_delay: Duration::from_millis((i as u64 * 5000) / DEVICES as u64),
                seed: i as u64,
            };
            devices.push(tokio::spawn(run_device(
                Device::new(spec),
                control_rx.clone(),
                stats.clone(),
            )));
        }
    }
    for (i, user) in probes.iter().enumerate() {
        let spec = Spec {
            proto: Proto::V4,
            user: user.clone(),
            token: tokens[user].clone(),
            client_id: format!("{user}-d0"),
            source: net.probe_source,
            server: SocketAddrV4::new(net.server_clean, chatd.mqtt_port),
            lossy: false,
            sends: (i == 0).then(|| (PROBE_EVERY, Recipients::One(probes[1].clone()))),
            live_round: false,
            start_delay: Duration::ZERO,
            seed: 1_000_000 + i as u64,
        };
        devices.push(tokio::spawn(run_device(
            Device::new(spec),
            control_rx.clone(),
            stats.clone(),
        )));
    }
    let total = devices.len();
    let progress = {
        let stats = stats.clone();
        move || {
            format!(
                "connected {}, back after the cut {}, acked {}, unacked {}, live round {}, final syncs {}, \
                 attempts {}, TCP timeouts {}, TCP errors {}, closed before CONNACK {}, refused {}, MQTT timeouts {}, lost {}",
                stats.connected.load(Ordering::Relaxed),
                stats.storm_back.load(Ordering::Relaxed),
                stats.acked.load(Ordering::Relaxed),
                stats.unacked.load(Ordering::Relaxed),
                stats.live_round_received.load(Ordering::Relaxed),
                stats.final_done.load(Ordering::Relaxed),
                stats.tcp_attempts.load(Ordering::Relaxed),
                stats.tcp_timeouts.load(Ordering::Relaxed),
                stats.tcp_errors.load(Ordering::Relaxed),
                stats.closed_before_connack.load(Ordering::Relaxed),
                stats.connack_refused.load(Ordering::Relaxed),
                stats.mqtt_timeouts.load(Ordering::Relaxed),
                stats.lost.load(Ordering::Relaxed),
            )
        }
    };

    // Everyone connects through the lossy link.
    let connecting = Instant::now();
    wait_until(
        "every device to connect",
        Duration::from_secs(90),
        || stats.connected.load(Ordering::Relaxed) == total,
        &progress,
    )
    .await;
    let initial_connect = connecting.elapsed();
    step("devices connect");
    eprintln!("flaky_network: {total} devices connected through the lossy link in {initial_connect:.1?} (apps started over 5 s)");

    // Sending, then the cut.
    control_tx.send_modify(|c| c.phase = Phase::Send);
    tokio::time::sleep(SEND_BEFORE_CUT).await;
    let acked_before_cut = stats.acked.load(Ordering::Relaxed);
    net.impair(CUT_OFF);
    let cut_at = Instant::now();
    control_tx.send_modify(|c| c.cut += 1);
    tokio::time::sleep(CUT).await;
    net.impair(LOSSY);
    let restored_at = Instant::now();
    eprintln!(
        "flaky_network: link cut at {} UTC, back at {} UTC (to match chatd's log)",
        utc_now_minus(CUT),
        utc_now_minus(Duration::ZERO)
    );
    wait_until(
        "every device to reconnect after the cut",
        Duration::from_secs(90),
        || stats.storm_back.load(Ordering::Relaxed) == DEVICES,
        &progress,
    )
    .await;
    let storm = restored_at.elapsed();
    step("sending, cut, storm");
    let storm_settled = Instant::now();
    eprintln!("flaky_network: link cut for {CUT:?}; all {DEVICES} devices back {storm:.1?} after it came back");
    tokio::time::sleep(SEND_AFTER_STORM).await;
    step("sending after the storm");

    // Stop sending; everything gets acked.
    control_tx.send_modify(|c| c.phase = Phase::Drain);
    let draining = Instant::now();
    wait_until(
        "every message to be acked",
        Duration::from_secs(90),
        || stats.unacked.load(Ordering::Relaxed) == 0,
        &progress,
    )
    .await;
    let drained = draining.elapsed();
    step("drain: every message acked");

    // The last round: one message from each storm sender, expected live.
    let senders = USERS;
    control_tx.send_modify(|c| c.phase = Phase::LiveRound);
    let live_round_at = Instant::now();
    wait_until(
        "the live round to be acked and received",
        Duration::from_secs(60),
        || {
            stats.unacked.load(Ordering::Relaxed) == 0
                && stats.live_round_received.load(Ordering::Relaxed) == senders * DEVICES_PER_USER
        },
        &progress,
    )
    .await;

    // Everyone catches up.
    step("live round");
    control_tx.send_modify(|c| c.phase = Phase::FinalSync);
    wait_until(
        "every device to finish its final sync",
        Duration::from_secs(90),
        || stats.final_done.load(Ordering::Relaxed) == total,
        &progress,
    )
    .await;
    step("final sync");
    // With everyone connected: presence counts each user's devices exactly (every dead
    // connection of the storm was taken over and closed, none lingers or was miscounted).
    // Read twice at most (what the subscribe budget allows): a device may happen to be
    // reconnecting during the first read; a session that lingers is there both times.
    let presence_exact = |p: &HashMap<String, Value>| {
        users.iter().all(|u| {
            p.get(u)
                .is_some_and(|v| v["status"] == "online" && v["devices"] == DEVICES_PER_USER)
        })
    };
    let server_clean = SocketAddrV4::new(net.server_clean, chatd.mqtt_port);
    let mut presence = read_presence(&net, server_clean, &probes[1], &tokens[&probes[1]], &users).await;
    if !presence_exact(&presence) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        presence = read_presence(&net, server_clean, &probes[1], &tokens[&probes[1]], &users).await;
    }
    step("presence");
    control_tx.send_modify(|c| c.phase = Phase::Done);
    let mut finished = Vec::new();
    for handle in devices {
        finished.push(
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("a device task ends")
                .expect("a device task does not panic"),
        );
    }

    step("devices stop");
    // ----- What the devices saw. -----
    let mut by_user: HashMap<&str, Vec<&Device>> = HashMap::new();
    for d in &finished {
        by_user.entry(d.spec.user.as_str()).or_default().push(d);
    }
    let mut problems: Vec<String> = Vec::new();
    let mut acked = 0usize;
    let mut missing = Vec::new();
    let mut retried_cids = 0usize;
    let mut expected_inbox: HashMap<&str, i64> = HashMap::new();
    let mut sent_ids: HashMap<String, (&str, &str)> = HashMap::new();
    let mut probe_latencies = Vec::new();
    let mut slow_probes = Vec::new();
    let mut latencies = Vec::new();
    for d in &finished {
        let me = d.spec.client_id.as_str();
        for e in d.errors.iter().take(5) {
            problems.push(format!("{me}: {e}"));
        }
        if d.errors.len() > 5 {
            problems.push(format!("{me}: … and {} more errors", d.errors.len() - 5));
        }
        for o in &d.out {
            let Some(id) = o.acks.first() else {
                problems.push(format!("{me}: {} never acked", o.cid));
                continue;
            };
            acked += 1;
            if o.publishes > 1 {
                retried_cids += 1;
            }
            if o.acks.iter().any(|other| other != id) {
                problems.push(format!(
                    "{me}: cid {} sent {} times was acked with different ids {:?}",
                    o.cid, o.publishes, o.acks
                ));
            }
            let (sent, latency) = (
                o.first_published.unwrap(),
                o.acked_at.unwrap() - o.first_published.unwrap(),
            );
            if d.spec.user == probes[0] {
                if sent >= cut_at && sent <= storm_settled + Duration::from_secs(3) {
                    probe_latencies.push(latency);
                    if latency > Duration::from_secs(1) {
                        let since_restore = seconds_between(restored_at, sent);
                        slow_probes.push(format!(
                            "{latency:.1?} (sent {since_restore:+.1} s after the link came back)"
                        ));
                    }
                }
            } else {
                latencies.push(latency);
            }
            sent_ids.insert(id.clone(), (d.spec.user.as_str(), o.text.as_str()));
            *expected_inbox.entry(d.spec.user.as_str()).or_default() += 1;
            *expected_inbox.entry(o.to.as_str()).or_default() += 1;
            // Every device of the recipient has it, once.
            for recipient in &by_user[o.to.as_str()] {
                let them = recipient.spec.client_id.as_str();
                match recipient.received.get(id) {
                    None => missing.push(format!("{me} -> {them}: {} ({id})", o.text)),
                    Some(r) if r.from != d.spec.user || r.text != o.text => problems.push(format!(
                        "{them}: message {id} arrived as from {} '{}', sent as from {} '{}'",
                        r.from, r.text, d.spec.user, o.text
                    )),
                    Some(r) => {
                        if o.text.starts_with("live:")
                            && !r.live
                            && recipient.connection_at_live_round == Some(recipient.connections)
                        {
                            let since: Vec<String> = recipient
                                .connected_at
                                .iter()
                                .map(|t| format!("{:+.1}", seconds_between(live_round_at, *t)))
                                .collect();
                            problems.push(format!(
                                "{them}: the live-round message {id} from {me} (acked {:+.1} s after the round began) came \
                                 only through sync, though {them} stayed connected (its connections began at {since:?} s)",
                                seconds_between(live_round_at, o.acked_at.unwrap())
                            ));
                        }
                    }
                }
            }
            // The sender's own copy, on each of its user's devices: one message id per
            // text, the acked one.
            for sibling in &by_user[d.spec.user.as_str()] {
                match sibling.own_seen.get(&o.text) {
                    Some(ids) if ids.len() == 1 && ids.contains(id) => {}
                    other => problems.push(format!(
                        "{}: own message '{}' (cid {}, acked as {id}) is in its inbox as {other:?}",
                        sibling.spec.client_id, o.text, o.cid
                    )),
                }
            }
        }
    }
    let mut duplicates_removed = 0u64;
    let mut stored_twice = 0usize;
    for d in &finished {
        let me = d.spec.client_id.as_str();
        duplicates_removed += d.deliveries - d.received.len() as u64;
        let mut ids_of_text: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        for (id, r) in &d.received {
            match sent_ids.get(id) {
                Some(&(from, text)) if from == r.from && text == r.text => {}
                _ => problems.push(format!(
                    "{me}: received message {id} ('{}' from {}) that no device sent or had acked",
                    r.text, r.from
                )),
            }
            ids_of_text.entry((&r.from, &r.text)).or_default().push(id);
        }
        for ((from, text), ids) in ids_of_text {
            if ids.len() > 1 {
                stored_twice += 1;
                problems.push(format!(
                    "{me}: '{text}' from {from} stored {} times: {ids:?}",
                    ids.len()
                ));
            }
        }
        let expected = expected_inbox.get(d.spec.user.as_str()).copied().unwrap_or(0);
        let positions: Vec<i64> = d.inbox.keys().copied().collect();
        if positions != (1..=expected).collect::<Vec<_>>() {
            problems.push(format!(
                "{me}: inbox positions should be 1..={expected}, are {} of them from {:?} to {:?} (contiguous to {})",
                positions.len(),
                positions.first(),
                positions.last(),
                d.contiguous
            ));
        }
    }
    for user in &users {
        match presence.get(user) {
            Some(v) if v["status"] == "online" && v["devices"] == DEVICES_PER_USER => {}
            other => problems.push(format!(
                "{user}: presence after the storm should be online with {DEVICES_PER_USER} devices, is {other:?}"
            )),
        }
    }
    step("checks");
    latencies.sort();
    probe_latencies.sort();
    let storm_times: Vec<Duration> = {
        let mut t: Vec<Duration> = finished
            .iter()
            .filter_map(|d| d.storm_back.map(|at| at.saturating_duration_since(restored_at)))
            .collect();
        t.sort();
        t
    };
    let log = chatd.log_lines();
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();

    let s = &stats;
    eprintln!("flaky_network: ---- results ----");
    let wire = match &net.lossy {
        Some(Lossy::Userspace(w)) => format!(
            " ({} packets carried, {} dropped)",
            w.carried.load(Ordering::Relaxed),
            w.dropped.load(Ordering::Relaxed)
        ),
        _ => String::new(),
    };
    eprintln!(
        "flaky_network: lossy link, each direction: netem {} ; cut: netem {} for {CUT:?}; by {}{wire}",
        LOSSY.netem_args().join(" "),
        CUT_OFF.netem_args().join(" "),
        net.how()
    );
    eprintln!(
        "flaky_network: devices {total}: {DEVICES} on the lossy link from {SOURCES} addresses ({USERS} users x {DEVICES_PER_USER} devices, \
         {senders} of them sending every {SEND_EVERY:?}), 2 probes on the clean link"
    );
    eprintln!(
        "flaky_network: messages acked {acked} ({acked_before_cut} before the cut), missing at recipients {}, stored twice {stored_twice}",
        missing.len()
    );
    eprintln!(
        "flaky_network: publishes {}, retries (same cid) {}, cids published more than once {retried_cids}, deliberate doubles {}",
        s.publishes.load(Ordering::Relaxed),
        s.retries.load(Ordering::Relaxed),
        s.doubles.load(Ordering::Relaxed)
    );
    eprintln!(
        "flaky_network: msg deliveries deduplicated by id {duplicates_removed}; syncs {} (after a live gap {}); rate_limited/internal errors {} {:?}",
        s.syncs.load(Ordering::Relaxed),
        s.gap_syncs.load(Ordering::Relaxed),
        s.rate_limited.load(Ordering::Relaxed),
        s.retryable_why.lock().unwrap()
    );
    eprintln!(
        "flaky_network: initial connect {initial_connect:.1?}; storm: all back {storm:.1?} after the link returned (p50 {:.1?}, p90 {:.1?}, p99 {:.1?})",
        percentile(&storm_times, 0.5),
        percentile(&storm_times, 0.9),
        percentile(&storm_times, 0.99)
    );
    eprintln!(
        "flaky_network: connection attempts {}, TCP connect timeouts {}, TCP errors {}, closed before CONNACK {}, CONNACK refused {}, \
         CONNACK/SUBACK timeouts {}, connections lost outside the cut {} {:?}",
        s.tcp_attempts.load(Ordering::Relaxed),
        s.tcp_timeouts.load(Ordering::Relaxed),
        s.tcp_errors.load(Ordering::Relaxed),
        s.closed_before_connack.load(Ordering::Relaxed),
        s.connack_refused.load(Ordering::Relaxed),
        s.mqtt_timeouts.load(Ordering::Relaxed),
        s.lost.load(Ordering::Relaxed),
        s.lost_why.lock().unwrap()
    );
    eprintln!(
        "flaky_network: ack latency over the lossy link (first publish to ack) p50 {:.1?}, p99 {:.1?}, max {:.1?}; drained in {drained:.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    eprintln!(
        "flaky_network: probe on the clean link during cut and storm: {} acks, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        probe_latencies.len(),
        percentile(&probe_latencies, 0.5),
        percentile(&probe_latencies, 0.99),
        probe_latencies.last().copied().unwrap_or_default()
    );
    if !slow_probes.is_empty() {
        eprintln!("flaky_network: probe acks slower than 1 s: {}", slow_probes.join(", "));
    }
    eprintln!("flaky_network: chatd logged {} warn/error lines", warnings.len());
    for line in warnings.iter().take(20) {
        eprintln!("  {line}");
    }

    // A clean stop, for the record (SIGTERM: chatd stores what it took and exits 0).
    if let Some(pid) = chatd.child.id() {
        // SAFETY: kill only sends a signal to the child this test started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(20), chatd.child.wait()).await;
        eprintln!("flaky_network: chatd stopped: {status:?}");
        for line in chatd.log_lines().iter().skip(log.len()) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("flaky_network: chatd while stopping: {line}");
            }
        }
    }
    step("chatd stops (SIGTERM)");
    eprintln!(
        "flaky_network: steps: {}",
        steps
            .iter()
            .map(|(name, took)| format!("{name} {took:.1?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("flaky_network: wall time {:.1?}", started.elapsed());

    assert!(
        missing.is_empty(),
        "{} acked messages never reached their recipient (first 20): {:#?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        problems.is_empty(),
        "{} problems (first 40): {:#?}",
        problems.len(),
        &problems[..problems.len().min(40)]
    );
    assert!(
        acked >= senders * 5,
        "too little traffic to mean anything: {acked} messages acked"
    );
    assert!(
        s.retries.load(Ordering::Relaxed) > 0,
        "nothing was retried: the cut did not bite"
    );
    assert!(
        probe_latencies.len() >= 20,
        "the probe sent too little during the storm: {probe_latencies:?}"
    );
    let slowest = probe_latencies.last().copied().unwrap_or_default();
    assert!(
        slowest <= PROBE_LIMIT,
        "a device on a clean path waited {slowest:?} for an ack during the storm (limit {PROBE_LIMIT:?})"
    );
    let median = percentile(&probe_latencies, 0.5);
    assert!(
        median <= PROBE_MEDIAN,
        "a device on a clean path waited {median:?} for half of its acks during the storm (limit {PROBE_MEDIAN:?})"
    );
    drop(chatd);
    drop(net);
}

/// Thousands of sockets: lift the soft open-files limit to the hard one.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) };
    assert!(
        now.rlim_cur as usize >= DEVICES + 500,
        "the open-files limit ({}) is too low for {DEVICES} devices",
        now.rlim_cur
    );
}

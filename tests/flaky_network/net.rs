//! The test network: a network namespace for chatd and the two links into it, made with
//! `ip` and `tc` and removed again by a guard.
//!
//! [`Net::create`] makes the namespace (`chatdfl-<pid>`), a **clean link** (a veth pair,
//! never impaired) and a **lossy link**: a veth pair with `tc … netem` on both ends where
//! the kernel has netem, else a TUN pair whose packets [`crate::netem::Wire`] carries and
//! impairs in this process. [`Net::impair`] changes the lossy link's impairment (lossy,
//! cut) while the test runs. Dropping the [`Net`] removes all of it, during a panic too;
//! what a killed run left behind (its process gone) is removed by the next run
//! ([`remove_leftovers`]). Everything here needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), and
//! fails loudly rather than skipping when it cannot have it.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::netem::{Impairment, Wire};
use crate::SOURCES;

/// Runs a command (words separated by spaces: no argument here has one); its stdout, or
/// why it failed.
pub fn sh(cmd: &str) -> Result<String, String> {
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

pub fn must(cmd: &str) -> String {
    sh(cmd).unwrap_or_else(|e| panic!("setting up the test network: {e}"))
}

pub const NS_PREFIX: &str = "chatdfl-";

/// How the lossy link is impaired.
pub enum Lossy {
    /// A veth pair with `tc qdisc … netem` on both ends.
    Netem,
    /// A TUN pair (one end in the namespace) joined by two threads of this process that
    /// apply netem's model themselves: for kernels built without netem.
    Userspace(Wire),
}

/// The namespace chatd runs in and the links to it; removed when dropped (a panic too).
pub struct Net {
    pub ns: String,
    pub lossy_root: String,
    pub lossy_ns: String,
    pub clean_root: String,
    pub clean_ns: String,
    pub lossy: Option<Lossy>,
    /// chatd's addresses, on the lossy and on the clean link.
    pub server_lossy: Ipv4Addr,
    pub server_clean: Ipv4Addr,
    /// Where storm devices connect from, and where the probe does.
    pub device_sources: Vec<Ipv4Addr>,
    pub probe_source: Ipv4Addr,
}

impl Net {
    pub fn create() -> Net {
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
    pub fn impair(&self, how: Impairment) {
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

    pub fn how(&self) -> &'static str {
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
pub fn open_tun(name: &str, ns: Option<&str>) -> std::io::Result<OwnedFd> {
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

/// Removes the namespaces and links of earlier runs whose process is gone (killed before
/// its cleanup could run). Only this test's own names are touched.
pub fn remove_leftovers() {
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
pub fn free_subnets(pid: u32) -> (u8, u8) {
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

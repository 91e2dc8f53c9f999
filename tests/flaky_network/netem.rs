//! The lossy link's impairment, and netem's model of it in userspace.
//!
//! An [`Impairment`] is one direction's netem parameters (delay, jitter, loss, reorder):
//! [`LOSSY`] is the bad mobile network the storm devices live on, [`CUT_OFF`] the network
//! gone away. Where the kernel has netem they become `tc qdisc … netem` arguments
//! ([`Impairment::netem_args`]); a kernel built without netem (this project's CI VM has
//! none) gets a TUN pair instead, and [`Wire`] applies the same model to the packets it
//! carries between the two ends, so the test behaves the same on either.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

/// The impairment of the lossy link, each direction, as netem's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    pub delay: Duration,
    pub jitter: Duration,
    /// Fractions.
    pub loss: f64,
    pub reorder: f64,
    pub reorder_correlation: f64,
}

impl Impairment {
    /// The same, as `tc qdisc … netem` arguments.
    pub fn netem_args(&self) -> Vec<String> {
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
pub const LOSSY: Impairment = Impairment {
    delay: Duration::from_millis(200),
    jitter: Duration::from_millis(100),
    loss: 0.15,
    reorder: 0.25,
    reorder_correlation: 0.5,
};

/// The lossy link, cut: `loss 100%`.
pub const CUT_OFF: Impairment = Impairment {
    delay: Duration::ZERO,
    jitter: Duration::ZERO,
    loss: 1.0,
    reorder: 0.0,
    reorder_correlation: 0.0,
};

/// Two threads carrying IP packets between the TUN devices, one per direction, each
/// dropping, delaying and reordering them as netem would with the current [`Impairment`]
/// (none: passed on at once): loss is independent per packet; a `reorder` fraction
/// (correlated with the previous draw, as netem's `get_crandom`) goes out at once, the
/// others after `delay` ± `jitter` (uniform), which also reorders them among themselves.
pub struct Wire {
    pub impairment: Arc<std::sync::Mutex<Option<Impairment>>>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
    /// Packets carried and dropped, both directions.
    pub carried: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
}

impl Wire {
    pub fn start(root: OwnedFd, inside: OwnedFd) -> Wire {
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

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub fn forward(
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

//! Small helpers of the scenario: waiting with a progress report, the time arithmetic of
//! the printed numbers, and an open-files limit high enough for thousands of sockets.

use std::time::{Duration, Instant};

use crate::DEVICES;

/// Polls until `done` holds, or panics after `limit` saying what it waited for.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool, progress: impl Fn() -> String) {
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
pub fn utc_now_minus(ago: Duration) -> String {
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
pub fn seconds_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() - from.saturating_duration_since(to).as_secs_f64()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Thousands of sockets: lift the soft open-files limit to the hard one.
pub fn raise_open_files_limit() {
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

//! Latency and throughput of one run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch: the send timestamp messages carry.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

pub struct Report {
    pub label: String,
    pub delivered: usize,
    pub expected: usize,
    pub elapsed: Duration,
    /// Sorted send-to-deliver latencies.
    pub latencies_us: Vec<u64>,
}

impl Report {
    pub fn new(label: String, expected: usize, elapsed: Duration, mut latencies_us: Vec<u64>) -> Report {
        latencies_us.sort_unstable();
        Report {
            label,
            delivered: latencies_us.len(),
            expected,
            elapsed,
            latencies_us,
        }
    }

    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    pub fn print(&self) {
        println!(
            "{:<30} delivered {}/{} in {:.2} s: {:>9.0} msg/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.label,
            self.delivered,
            self.expected,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
        );
    }
}

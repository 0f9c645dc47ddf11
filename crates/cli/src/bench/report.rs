//! The bench's findings: throughput per phase and per client, latency percentiles from
//! HDR histograms, the verification, CPU and memory; printed as a table or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::floor::DiskFloor;
use super::payload::Counts;

/// Highest latency a histogram records (one hour, in ns); above it values are clamped.
pub const LATENCY_NS_MAX: u64 = 3_600_000_000_000;
/// Significant decimal digits the histograms keep (0.1 % resolution).
const LATENCY_DIGITS: u8 = 3;

/// A latency histogram in nanoseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_DIGITS).expect("valid bounds")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Some(Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p99_9_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1_000.0,
        })
    }
}

/// Messages and bytes over a time.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub messages: u64,
    /// Value bytes (the message size times the messages).
    pub bytes: u64,
    pub seconds: f64,
    pub msgs_per_s: f64,
    /// 10^6 bytes per second.
    pub mb_per_s: f64,
}

impl Throughput {
    pub fn new(messages: u64, bytes: u64, elapsed: Duration) -> Self {
        let s = elapsed.as_secs_f64();
        let rate = |n: u64| if s > 0.0 { n as f64 / s } else { 0.0 };
        Throughput {
            messages,
            bytes,
            seconds: s,
            msgs_per_s: rate(messages),
            mb_per_s: rate(bytes) / 1e6,
        }
    }
}

/// One producer's or consumer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ClientFigure {
    pub id: u32,
    #[serde(flatten)]
    pub throughput: Throughput,
    pub errors: u64,
}

/// A phase: producing, filling a backlog, or consuming.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    #[serde(flatten)]
    pub total: Throughput,
    pub errors: u64,
    pub first_error: Option<String>,
    pub clients: Vec<ClientFigure>,
}

/// What the consumers' check found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub summary: String,
    /// Messages the producers had acknowledged (sent, under acks none).
    pub expected: u64,
    /// Distinct messages of this run that were read.
    pub distinct: u64,
    pub missing: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// CPU and memory over the measured phases.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// CPU time of this process (bench, and the broker when embedded) per wall second.
    pub process_cpu_cores: Option<f64>,
    pub process_cpu_s: Option<f64>,
    /// Time this process's threads were ready but waited for a CPU, per wall second: on
    /// a shared machine, what other processes took. Near 0 on a quiet machine.
    pub process_cpu_wait_cores: Option<f64>,
    /// CPU of the broker alone: its threads when embedded, its process with --server-pid.
    pub broker_cpu_cores: Option<f64>,
    pub broker_cpu_s: Option<f64>,
    /// Peak resident memory of this process (bench included when embedded).
    pub process_rss_peak_bytes: Option<u64>,
    /// Peak and last resident memory of the broker process (--server-pid).
    pub broker_rss_peak_bytes: Option<u64>,
    pub broker_rss_bytes: Option<u64>,
    pub wall_s: f64,
}

/// Everything one run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub settings: serde_json::Value,
    pub broker: String,
    pub fill: Option<Phase>,
    pub produce: Option<Phase>,
    pub consume: Option<Phase>,
    /// Send → acknowledgement, per message.
    pub ack_latency: Option<Latency>,
    /// Send → read by a consumer, per message (send time carried in the message).
    pub e2e_latency: Option<Latency>,
    /// What the disk alone allowed at the same rate (`--disk-floor`).
    pub disk_floor: Option<DiskFloor>,
    pub verification: Option<Verification>,
    pub resources: Resources,
    pub notes: Vec<String>,
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn phase_table(out: &mut String, name: &str, verb: &str, p: &Phase) {
    let t = &p.total;
    let _ = writeln!(
        out,
        "{name:<8} {:>14} msgs in {:>8.3} s  {:>13} msg/s  {:>9.1} MB/s{}",
        thousands(t.messages as f64),
        t.seconds,
        thousands(t.msgs_per_s),
        t.mb_per_s,
        if p.errors > 0 {
            format!("  ({} errors)", p.errors)
        } else {
            String::new()
        }
    );
    if p.clients.len() > 1 || p.errors > 0 {
        for c in &p.clients {
            let t = &c.throughput;
            let _ = writeln!(
                out,
                "  {verb} {:<4} {:>12} msgs in {:>8.3} s  {:>13} msg/s  {:>9.1} MB/s{}",
                c.id,
                thousands(t.messages as f64),
                t.seconds,
                thousands(t.msgs_per_s),
                t.mb_per_s,
                if c.errors > 0 {
                    format!("  ({} errors)", c.errors)
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(e) = &p.first_error {
        let _ = writeln!(out, "  first error: {e}");
    }
}

fn latency_line(out: &mut String, name: &str, l: &Latency) {
    let _ = writeln!(
        out,
        "{name:<14} p50 {:>9.1}  p90 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  max {:>9.1}  µs  ({} msgs)",
        l.p50_us,
        l.p90_us,
        l.p99_us,
        l.p99_9_us,
        l.max_us,
        thousands(l.count as f64)
    );
}

impl Report {
    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "weir bench {} — {}", self.scenario, self.broker);
        if let Some(obj) = self.settings.as_object() {
            let line: Vec<String> = obj
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
                .collect();
            let _ = writeln!(out, "settings: {}", line.join(" "));
        }
        if let Some(p) = &self.fill {
            phase_table(&mut out, "filled", "producer", p);
        }
        if let Some(p) = &self.produce {
            phase_table(&mut out, "produced", "producer", p);
        }
        if let Some(p) = &self.consume {
            phase_table(&mut out, "consumed", "consumer", p);
        }
        if let Some(l) = &self.ack_latency {
            latency_line(&mut out, "ack latency", l);
        }
        if let Some(l) = &self.e2e_latency {
            latency_line(&mut out, "e2e latency", l);
        }
        if let Some(f) = &self.disk_floor {
            latency_line(&mut out, "disk floor", &f.messages);
            latency_line(&mut out, "  fdatasync", &f.fdatasync);
            // The broker's share: how far above what the disk alone allows it is.
            if let Some(l) = self.e2e_latency.as_ref().or(self.ack_latency.as_ref()) {
                let _ = writeln!(
                    out,
                    "{:<14} p50 {:>8.2}×  p99 {:>8.2}×  of the disk floor",
                    if self.e2e_latency.is_some() {
                        "e2e"
                    } else {
                        "ack"
                    },
                    l.p50_us / f.messages.p50_us,
                    l.p99_us / f.messages.p99_us,
                );
            }
        }
        if let Some(v) = &self.verification {
            let _ = writeln!(
                out,
                "verified: {} {}",
                if v.ok { "OK" } else { "FAILED" },
                v.summary
            );
        }
        let r = &self.resources;
        let mut res = Vec::new();
        if let (Some(c), Some(s)) = (r.process_cpu_cores, r.process_cpu_s) {
            res.push(format!("process cpu {c:.2} cores ({s:.2} s)"));
        }
        if let Some(w) = r.process_cpu_wait_cores.filter(|w| *w >= 0.05) {
            res.push(format!("waited for a cpu {w:.2} cores (machine busy)"));
        }
        if let (Some(c), Some(s)) = (r.broker_cpu_cores, r.broker_cpu_s) {
            res.push(format!("broker cpu {c:.2} cores ({s:.2} s)"));
        }
        if let Some(b) = r.process_rss_peak_bytes {
            res.push(format!("process rss peak {} MiB", b >> 20));
        }
        if let Some(b) = r.broker_rss_peak_bytes {
            res.push(format!("broker rss peak {} MiB", b >> 20));
        }
        if !res.is_empty() {
            let _ = writeln!(out, "resources: {} over {:.1} s", res.join(", "), r.wall_s);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_in_microseconds() {
        let mut h = histogram();
        for ns in 1..=1000u64 {
            h.record(ns * 1_000).unwrap();
        }
        let l = Latency::from_histogram(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        assert!(Latency::from_histogram(&histogram()).is_none());
    }

    #[test]
    fn throughput_and_table() {
        let t = Throughput::new(2_000_000, 200_000_000, Duration::from_secs(2));
        assert_eq!(t.msgs_per_s, 1_000_000.0);
        assert_eq!(t.mb_per_s, 100.0);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(12.0), "12");
        let r = Report {
            scenario: "produce".into(),
            settings: serde_json::json!({"producers": 1}),
            broker: "embedded".into(),
            fill: None,
            produce: Some(Phase {
                total: t.clone(),
                errors: 0,
                first_error: None,
                clients: vec![],
            }),
            consume: None,
            ack_latency: None,
            e2e_latency: None,
            disk_floor: None,
            verification: None,
            resources: Resources::default(),
            notes: vec!["n".into()],
        };
        let table = r.table();
        assert!(table.contains("1,000,000 msg/s"), "{table}");
        assert!(table.contains("note: n"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["produce"]["msgs_per_s"], 1_000_000.0);
    }
}

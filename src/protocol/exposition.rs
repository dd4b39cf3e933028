//! The Prometheus text exposition format, version 0.0.4: numbers in, text out.
//!
//! What the `metrics` service answers `GET /metrics` with. A scrape is a list of *families*,
//! each declared once by a `# HELP` and a `# TYPE` line and followed by its samples, one line
//! each: `name{label="value",...} number`. That is the whole format; the rules that matter are
//! that a family's samples follow its declaration, that label values and help texts are escaped
//! (`\\`, `\"`, `\n`), and that a histogram is its cumulative `_bucket{le=...}` samples, ending
//! at `le="+Inf"`, then `_sum` and `_count`.
//!
//! ## Why not the `prometheus-client` crate
//!
//! The Prometheus project's Rust client encodes OpenMetrics, not 0.0.4: a counter's `# TYPE`
//! line names it without `_total` while its sample carries the suffix, and it ends with
//! `# EOF`. Served as `text/plain; version=0.0.4` (what the contract says, and what every
//! Prometheus since 2.0 reads), that is inconsistent (client_rust issues #51 and #194; the
//! 0.0.4 encoder is an open pull request, #293). Its metric types are also atomics behind
//! `Arc`s, updated where events happen; oneloop's counters are plain integers the loop owns
//! and are only *read* here, once per scrape. So the writer is this file: no state of its
//! own, appending to the caller's buffer, and checked by the real `promtool check metrics`
//! and a real Prometheus server in the tests.

use std::fmt::Display;
use std::io::Write;

/// The `Content-Type` of a scrape's body.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A family's type, as its `# TYPE` line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (or back to zero when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into cumulative buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's labels: `(name, value)` pairs, written in this order.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Appends families and samples to a buffer, in the 0.0.4 text format.
#[derive(Debug)]
pub struct Exposition<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Exposition<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Exposition<'a> {
        Exposition { out }
    }

    /// Declares family `name`: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.extend_from_slice(b"# HELP ");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        escape_into(self.out, help, false);
        self.out.extend_from_slice(b"\n# TYPE ");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(kind.name().as_bytes());
        self.out.push(b'\n');
    }

    /// One sample of the family just declared (or, for a histogram, one of its `_bucket`,
    /// `_sum` and `_count` series). `value`: an integer, or a float (Rust's shortest exact
    /// decimal form, which Prometheus parses).
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: impl Display) {
        self.out.extend_from_slice(name.as_bytes());
        self.labels(labels, None);
        // Writing to a Vec cannot fail.
        let _ = writeln!(self.out, " {value}");
    }

    /// The samples of one histogram series: `buckets` are `(upper bound, observations at most
    /// that)` in increasing order — *not* cumulative; they are summed here — and `over` the
    /// observations above the last bound. Writes each bucket, `+Inf`, `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: Labels<'_>,
        buckets: &[(f64, u64)],
        over: u64,
        sum: f64,
    ) {
        let mut count = 0;
        let mut series = String::with_capacity(name.len() + 7);
        series.push_str(name);
        series.push_str("_bucket");
        for &(bound, observed) in buckets {
            count += observed;
            self.out.extend_from_slice(series.as_bytes());
            self.labels(labels, Some(&bound.to_string()));
            let _ = writeln!(self.out, " {count}");
        }
        count += over;
        self.out.extend_from_slice(series.as_bytes());
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        let _ = writeln!(self.out, "{name}_sum{} {sum}", LabelText(labels));
        let _ = writeln!(self.out, "{name}_count{} {count}", LabelText(labels));
    }

    /// `{a="x",b="y"}` (and `le`, last, for a bucket), or nothing without labels.
    fn labels(&mut self, labels: Labels<'_>, le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push(b'{');
        let le = le.map(|le| ("le", le));
        for (index, (name, value)) in labels.iter().copied().chain(le).enumerate() {
            if index > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b"=\"");
            escape_into(self.out, value, true);
            self.out.push(b'"');
        }
        self.out.push(b'}');
    }
}

/// Labels in braces, for `write!` (the `_sum` and `_count` lines).
struct LabelText<'a>(Labels<'a>);

impl Display for LabelText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        Exposition::new(&mut text).labels(self.0, None);
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

/// Appends `text` escaped as the format requires: a backslash and a newline always, a double
/// quote inside a label value.
fn escape_into(out: &mut Vec<u8>, text: &str, quote: bool) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            _ => out.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(write: impl FnOnce(&mut Exposition<'_>)) -> String {
        let mut out = Vec::new();
        write(&mut Exposition::new(&mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_counter_family_with_labelled_samples() {
        let text = written(|e| {
            e.family("oneloop_x_total", Kind::Counter, "Things done.");
            e.sample(
                "oneloop_x_total",
                &[("protocol", "echo"), ("transport", "tcp")],
                3,
            );
            e.sample("oneloop_x_total", &[], 0.25);
        });
        assert_eq!(
            text,
            "# HELP oneloop_x_total Things done.\n# TYPE oneloop_x_total counter\n\
             oneloop_x_total{protocol=\"echo\",transport=\"tcp\"} 3\noneloop_x_total 0.25\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let text = written(|e| {
            e.family("m", Kind::Gauge, "a \\ b\nc \"d\"");
            e.sample("m", &[("address", "/tmp/a\"b\\c\nd")], 1);
        });
        assert_eq!(
            text,
            "# HELP m a \\\\ b\\nc \"d\"\n# TYPE m gauge\nm{address=\"/tmp/a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_and_ends_at_infinity() {
        let text = written(|e| {
            e.family("h", Kind::Histogram, "Sizes.");
            e.histogram(
                "h",
                &[("a", "b")],
                &[(1.0, 2), (4.0, 0), (16.0, 3)],
                1,
                40.5,
            );
        });
        assert_eq!(
            text,
            "# HELP h Sizes.\n# TYPE h histogram\n\
             h_bucket{a=\"b\",le=\"1\"} 2\nh_bucket{a=\"b\",le=\"4\"} 2\n\
             h_bucket{a=\"b\",le=\"16\"} 5\nh_bucket{a=\"b\",le=\"+Inf\"} 6\n\
             h_sum{a=\"b\"} 40.5\nh_count{a=\"b\"} 6\n"
        );
    }

    #[test]
    fn a_histogram_without_labels_has_only_le() {
        let text = written(|e| e.histogram("h", &[], &[(0.001, 1)], 0, 0.0005));
        assert_eq!(
            text,
            "h_bucket{le=\"0.001\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.0005\nh_count 1\n"
        );
    }
}

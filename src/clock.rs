//! Time, read by the caller and handed to the protocols.
//!
//! Sans-I/O protocols never ask the system for the time: the driver reads the clocks once per
//! loop turn and passes a [`Now`] to every protocol call. That keeps protocol tests exact (they
//! make a `Now` with a fixed text) and keeps the hot path cheap: reading the wall clock is a vDSO
//! call, but turning it into local time and formatting it is not, so [`Clock`] re-formats the
//! `ctime` text only when the second changes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Length of `time.ctime()` text for years 1000–9999: `Wed Sep  9 16:42:46 2026`.
pub(crate) const CTIME_LEN: usize = 24;

/// The moment a batch of events is handled: a monotonic instant for deadlines, and the local
/// wall-clock time already formatted as Python's `time.ctime()` for the timestamp protocol.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time, for deadlines (linger, idle timeout).
    pub instant: Instant,
    ctime: [u8; CTIME_LEN],
}

impl Now {
    /// A `Now` with a given `ctime` text, for tests and for drivers with their own clock.
    ///
    /// # Panics
    /// If `ctime` is not exactly [`CTIME_LEN`] bytes.
    pub fn with_ctime(instant: Instant, ctime: &str) -> Now {
        let bytes: [u8; CTIME_LEN] = ctime
            .as_bytes()
            .try_into()
            .expect("ctime text is exactly 24 bytes");
        Now {
            instant,
            ctime: bytes,
        }
    }

    /// The local time as `time.ctime()` prints it, e.g. `Wed Sep  9 16:42:46 2026`.
    pub fn ctime(&self) -> &[u8] {
        &self.ctime
    }
}

/// Reads the clocks and caches the formatted local time for the current second.
#[derive(Debug)]
pub(crate) struct Clock {
    /// The Unix second whose text is in `ctime`; `i64::MIN` before the first read.
    cached_second: i64,
    ctime: [u8; CTIME_LEN],
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            cached_second: i64::MIN,
            ctime: [b' '; CTIME_LEN],
        }
    }
}

impl Clock {
    /// Reads both clocks; formats the local time only if the second has changed.
    pub(crate) fn now(&mut self) -> Now {
        let instant = Instant::now();
        let second = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => since.as_secs() as i64,
            Err(before) => -(before.duration().as_secs() as i64) - 1,
        };
        if second != self.cached_second {
            self.ctime = format_ctime(second);
            self.cached_second = second;
        }
        Now {
            instant,
            ctime: self.ctime,
        }
    }
}

/// Formats a Unix second as `time.ctime()` does, in the process's local time zone.
///
/// `%e` pads the day with a space, as C's `asctime` does. A year past 9999 does not fit in 24
/// bytes and is cut short (the server's clock would have to be badly wrong).
pub(crate) fn format_ctime(unix_second: i64) -> [u8; CTIME_LEN] {
    use chrono::{Local, TimeZone};
    use std::io::Write;

    let mut text = [b'?'; CTIME_LEN];
    if let Some(local) = Local.timestamp_opt(unix_second, 0).earliest() {
        let formatted = local.format("%a %b %e %H:%M:%S %Y").to_string();
        let mut cursor = &mut text[..];
        // Fails only when the text is longer than 24 bytes; the cut text is still the best answer.
        let _ = cursor.write_all(formatted.as_bytes());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctime_has_python_shape() {
        let text = format_ctime(1_789_000_000);
        let text = std::str::from_utf8(&text).unwrap();
        // `Www Mmm dd hh:mm:ss yyyy`, the day padded with a space.
        let parts: Vec<&str> = text.split(' ').filter(|p| !p.is_empty()).collect();
        assert_eq!(parts.len(), 5, "{text:?}");
        assert_eq!(text.len(), CTIME_LEN);
        assert_eq!(&text[3..4], " ");
        assert_eq!(&text[7..8], " ");
        assert_eq!(&text[10..11], " ");
        assert_eq!(&text[13..14], ":");
        assert_eq!(&text[16..17], ":");
    }

    #[test]
    fn single_digit_day_is_space_padded() {
        // 2026-09-09 12:00:00 UTC is the 9th in every time zone from UTC-11 to UTC+11.
        let text = format_ctime(1_788_955_200);
        let text = std::str::from_utf8(&text).unwrap();
        assert_eq!(&text[4..10], "Sep  9", "{text:?}");
    }

    #[test]
    fn clock_caches_per_second() {
        let mut clock = Clock::default();
        let a = clock.now();
        let b = clock.now();
        assert!(b.instant >= a.instant);
        assert_eq!(a.ctime().len(), CTIME_LEN);
    }
}

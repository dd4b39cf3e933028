//! The process's own figures, as every Prometheus client exports them (`process_*`).
//!
//! Read the way the Prometheus Go client's process collector reads them on Linux: CPU time
//! and resident pages from `/proc/self/stat`, open descriptors by listing `/proc/self/fd`, the
//! soft `RLIMIT_NOFILE`, and the start time from the stat's start tick and the boot time in
//! `/proc/stat`. `/proc` is the kernel's memory, not a disk: these reads never wait on I/O,
//! which is why the loop may make them during a scrape. Counting the descriptors is one `stat`
//! on Linux 6.2 and later; before, it lists `/proc/self/fd`, which grows with the descriptors
//! open (about 4 ms at 10,000).

use std::io;
use std::sync::OnceLock;

/// The process figures of one scrape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// What `/proc/self/stat` says, in its own units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// When the process started, in clock ticks since boot.
    start_ticks: u64,
    /// Resident pages.
    rss_pages: u64,
}

impl ProcessStats {
    /// Reads them now.
    pub(crate) fn read() -> io::Result<ProcessStats> {
        let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat")?)?;
        let (ticks, page) = crate::sys::clock_ticks_and_page_size();
        let open_fds = open_fds()?;
        let boot = boot_time()?;
        Ok(ProcessStats {
            cpu_seconds: stat.cpu_ticks as f64 / ticks as f64,
            resident_bytes: stat.rss_pages * page,
            open_fds,
            max_fds: crate::sys::fd_soft_limit()?,
            start_time_seconds: boot as f64 + stat.start_ticks as f64 / ticks as f64,
        })
    }
}

/// How many descriptors are open. Since Linux 6.2 a `stat` of `/proc/self/fd` says so in its
/// size: one syscall, where listing the directory costs about 4 ms at 10,000 descriptors (most
/// of a scrape). Older kernels report 0 there, and then the directory is listed (the listing's
/// own descriptor, open while it lists, is not counted).
fn open_fds() -> io::Result<u64> {
    let size = std::fs::metadata("/proc/self/fd")?.len();
    if size > 0 {
        return Ok(size);
    }
    let listed = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok(listed.saturating_sub(1))
}

/// The boot time (`btime` in `/proc/stat`), in seconds since the Unix epoch: read once.
fn boot_time() -> io::Result<u64> {
    static BOOT: OnceLock<u64> = OnceLock::new();
    if let Some(boot) = BOOT.get() {
        return Ok(*boot);
    }
    let text = std::fs::read_to_string("/proc/stat")?;
    let boot = text
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| invalid("/proc/stat has no btime"))?;
    Ok(*BOOT.get_or_init(|| boot))
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from after the *last* `)`.
fn parse_stat(text: &str) -> io::Result<Stat> {
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or_else(|| invalid("/proc/self/stat has no command name"))?;
    // After the name, field 3 (state) comes first: field N is at index N - 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| invalid("/proc/self/stat is shorter than expected"))
    };
    Ok(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses() {
        let text = "42 (a) b (c) S 1 42 42 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 5000 \
                    12345678 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(text).unwrap(),
            Stat {
                cpu_ticks: 10,
                start_ticks: 5000,
                rss_pages: 321
            }
        );
        assert!(parse_stat("42 (x").is_err());
        assert!(parse_stat("42 (x) S 1").is_err());
    }

    #[test]
    fn the_readings_are_plausible_and_follow_the_process() {
        let before = ProcessStats::read().unwrap();
        assert!(before.resident_bytes > 0);
        assert_eq!(before.max_fds, crate::sys::fd_soft_limit().unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(before.start_time_seconds <= now + 1.0);
        assert!(before.start_time_seconds > now - 24.0 * 3600.0);
        // Other tests open descriptors at the same time: many more files make the rise clear.
        let files: Vec<_> = (0..200)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let during = ProcessStats::read().unwrap();
        assert!(during.open_fds >= 150 && during.open_fds > before.open_fds);
        drop(files);
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(ProcessStats::read().unwrap().cpu_seconds > before.cpu_seconds);
    }
}

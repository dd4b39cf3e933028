//! Test helpers: scratch directories and tiny tmpfs mounts.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A fresh, empty directory under the system's temporary directory, removed (with what is in
/// it) when dropped.
pub(super) struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub(super) fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "oneloop-storage-unit-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        Scratch { path }
    }

    /// The names in the directory, sorted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A tmpfs mounted on a fresh directory with `options` (`size=64k`), unmounted when dropped;
/// `None`, after a note on stderr, where this process may not mount (not root).
pub(super) struct Tmpfs {
    pub scratch: Scratch,
}

impl Tmpfs {
    pub(super) fn mount(name: &str, options: &str) -> Option<Tmpfs> {
        let scratch = Scratch::new(name);
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&scratch.path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            Some(Tmpfs { scratch })
        } else {
            eprintln!("note: cannot mount a tmpfs here (not root?); {name} test skipped");
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.scratch.path).status();
    }
}

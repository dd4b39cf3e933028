//! `storage::durable` on real files in real directories: what is stored, under which name, and
//! that nothing is ever replaced or left behind.
//!
//! Each test works in its own directory under the system's temporary directory, removed at the
//! end. Two tests need a tiny tmpfs (a full disk, a read-only file system); they mount one when
//! the process may (root, as CI runs), and otherwise say on stderr that they skipped.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;

use oneloop::protocol::upload::TEMP_PREFIX;
use oneloop::storage::{TempFile, UploadDir};

/// A fresh, empty directory, removed (with its contents) when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path =
            std::env::temp_dir().join(format!("oneloop-storage-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        Scratch { path }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        names_in(&self.path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // remove_dir_all does not follow symbolic links: a link to a file outside is removed as a
        // link.
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn names_in(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn open(scratch: &Scratch) -> Arc<UploadDir> {
    Arc::new(UploadDir::open(&scratch.path).unwrap())
}

/// Writes `content` into a new temporary file and commits it as `name`; returns the name it got.
fn store(dir: &Arc<UploadDir>, name: &str, content: &[u8]) -> String {
    let mut file = TempFile::create(dir).unwrap();
    file.write_all(content).unwrap();
    file.commit(name).unwrap().name
}

fn no_temporary_files(scratch: &Scratch) {
    let temps: Vec<String> = scratch
        .names()
        .into_iter()
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

#[test]
fn a_commit_stores_the_exact_bytes_and_leaves_no_temporary_file() {
    let scratch = Scratch::new("exact");
    let dir = open(&scratch);
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut file = TempFile::create(&dir).unwrap();
    assert!(file.name().starts_with(TEMP_PREFIX), "{}", file.name());
    // The temporary file is there, hidden, while it is written.
    assert_eq!(scratch.names(), vec![file.name().to_owned()]);
    for chunk in content.chunks(65_536) {
        file.write_all(chunk).unwrap();
    }
    let stored = file.commit("photo.jpg").unwrap();
    assert_eq!(stored.name, "photo.jpg");
    assert_eq!(stored.size, content.len() as u64);
    assert_eq!(stored.name_calls, 1);
    assert_eq!(fs::read(scratch.join("photo.jpg")).unwrap(), content);
    assert_eq!(scratch.names(), vec!["photo.jpg"]);
    // 0o644 before the umask: the umask may only take bits away.
    let mode = fs::metadata(scratch.join("photo.jpg"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777 & !0o644, 0, "mode {mode:o}");
}

#[test]
fn an_empty_upload_is_an_empty_file() {
    let scratch = Scratch::new("empty");
    let dir = open(&scratch);
    assert_eq!(store(&dir, "empty.bin", b""), "empty.bin");
    assert_eq!(fs::read(scratch.join("empty.bin")).unwrap(), b"");
    no_temporary_files(&scratch);
}

#[test]
fn two_commits_of_one_name_get_two_names() {
    let scratch = Scratch::new("twice");
    let dir = open(&scratch);
    assert_eq!(store(&dir, "x.txt", b"first"), "x.txt");
    assert_eq!(store(&dir, "x.txt", b"second"), "x-2.txt");
    assert_eq!(store(&dir, "x.txt", b"third"), "x-3.txt");
    assert_eq!(fs::read(scratch.join("x.txt")).unwrap(), b"first");
    assert_eq!(fs::read(scratch.join("x-2.txt")).unwrap(), b"second");
    assert_eq!(fs::read(scratch.join("x-3.txt")).unwrap(), b"third");
    assert_eq!(scratch.names(), vec!["x-2.txt", "x-3.txt", "x.txt"]);
}

#[test]
fn concurrent_commits_of_one_name_all_land_under_distinct_names() {
    const WRITERS: usize = 16;
    let scratch = Scratch::new("concurrent");
    let dir = open(&scratch);
    let start = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let dir = Arc::clone(&dir);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let content = format!("writer {i} ").repeat(1000 + i);
                let mut file = TempFile::create(&dir).unwrap();
                file.write_all(content.as_bytes()).unwrap();
                start.wait(); // Every commit at once.
                (file.commit("same.txt").unwrap().name, content)
            })
        })
        .collect();
    let results: Vec<(String, String)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let names: HashSet<&String> = results.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names.len(),
        WRITERS,
        "two commits got one name: {results:?}"
    );
    for (name, content) in &results {
        assert_eq!(&fs::read_to_string(scratch.join(name)).unwrap(), content);
    }
    let mut expected: Vec<String> = (2..=WRITERS).map(|n| format!("same-{n}.txt")).collect();
    expected.push("same.txt".into());
    expected.sort();
    assert_eq!(scratch.names(), expected);
}

#[test]
fn an_existing_file_is_never_replaced() {
    let scratch = Scratch::new("existing");
    let outside = Scratch::new("existing-outside");
    fs::write(scratch.join("x.txt"), b"someone's file").unwrap();
    fs::write(outside.join("target"), b"outside").unwrap();
    symlink(outside.join("target"), scratch.join("link.txt")).unwrap();
    fs::create_dir(scratch.join("folder")).unwrap();
    let dir = open(&scratch);

    assert_eq!(store(&dir, "x.txt", b"upload"), "x-2.txt");
    assert_eq!(store(&dir, "link.txt", b"upload"), "link-2.txt");
    assert_eq!(store(&dir, "folder", b"upload"), "folder-2");

    assert_eq!(fs::read(scratch.join("x.txt")).unwrap(), b"someone's file");
    assert!(fs::symlink_metadata(scratch.join("link.txt"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"outside");
    assert!(scratch.join("folder").is_dir());
    assert_eq!(fs::read(scratch.join("x-2.txt")).unwrap(), b"upload");
}

#[test]
fn a_renamed_directory_path_does_not_redirect_uploads() {
    let scratch = Scratch::new("moved");
    let original = scratch.join("uploads");
    fs::create_dir(&original).unwrap();
    let dir = Arc::new(UploadDir::open(&original).unwrap());
    let mut file = TempFile::create(&dir).unwrap();
    file.write_all(b"data").unwrap();
    // The path now leads to another directory; the upload still goes where it started.
    fs::rename(&original, scratch.join("moved-away")).unwrap();
    fs::create_dir(&original).unwrap();
    assert_eq!(file.commit("f.txt").unwrap().name, "f.txt");
    assert_eq!(
        fs::read(scratch.join("moved-away").join("f.txt")).unwrap(),
        b"data"
    );
    assert!(names_in(&original).is_empty());
}

#[test]
fn leftovers_are_removed_at_open_and_nothing_else_is() {
    let scratch = Scratch::new("leftovers");
    let outside = Scratch::new("leftovers-outside");
    fs::write(
        scratch.join(".oneloop-upload-1234-0-00ff00ff00ff00ff"),
        b"crash",
    )
    .unwrap();
    fs::write(scratch.join(".oneloop-upload-old"), b"crash").unwrap();
    fs::write(scratch.join("keep.txt"), b"keep").unwrap();
    fs::write(scratch.join(".oneloop-uploadx"), b"not our prefix").unwrap();
    fs::write(outside.join("target"), b"precious").unwrap();
    // Not made by us: a symbolic link is left alone (never followed), and so is a directory.
    symlink(outside.join("target"), scratch.join(".oneloop-upload-evil")).unwrap();
    fs::create_dir(scratch.join(".oneloop-upload-dir")).unwrap();
    fs::write(scratch.join(".oneloop-upload-dir").join("inside"), b"x").unwrap();

    let dir = UploadDir::open(&scratch.path).unwrap();
    assert_eq!(dir.leftovers().removed, 2);
    assert_eq!(dir.leftovers().kept, 2);
    assert_eq!(
        scratch.names(),
        vec![
            ".oneloop-upload-dir",
            ".oneloop-upload-evil",
            ".oneloop-uploadx",
            "keep.txt"
        ]
    );
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"precious");
    assert!(fs::symlink_metadata(scratch.join(".oneloop-upload-evil"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read(scratch.join(".oneloop-upload-dir").join("inside")).unwrap(),
        b"x"
    );
}

#[test]
fn a_temporary_file_another_server_is_writing_is_not_a_leftover() {
    let scratch = Scratch::new("shared");
    let first = open(&scratch);
    let mut writing = TempFile::create(&first).unwrap();
    writing.write_all(b"half").unwrap();
    // A second server starting on the same directory: the file is locked, so it is kept.
    let second = UploadDir::open(&scratch.path).unwrap();
    assert_eq!(second.leftovers().removed, 0);
    assert_eq!(second.leftovers().kept, 1);
    writing.write_all(b" and the rest").unwrap();
    assert_eq!(writing.commit("f.txt").unwrap().name, "f.txt");
    assert_eq!(
        fs::read(scratch.join("f.txt")).unwrap(),
        b"half and the rest"
    );
    no_temporary_files(&scratch);
}

#[test]
fn open_fails_naming_the_path() {
    let scratch = Scratch::new("open-errors");
    let missing = scratch.join("missing");
    let error = UploadDir::open(&missing).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    let text = error.to_string();
    assert!(text.starts_with(&missing.display().to_string()), "{text}");
    assert!(text.contains("no such file or directory"), "{text}");

    let file = scratch.join("file");
    fs::write(&file, b"").unwrap();
    let text = UploadDir::open(&file).unwrap_err().to_string();
    assert!(text.starts_with(&file.display().to_string()), "{text}");
    assert!(text.contains("not a directory"), "{text}");
}

#[test]
fn discard_and_drop_leave_nothing() {
    let scratch = Scratch::new("discard");
    let dir = open(&scratch);
    let mut file = TempFile::create(&dir).unwrap();
    file.write_all(b"cut short").unwrap();
    file.discard().unwrap();
    assert!(scratch.names().is_empty());

    let mut file = TempFile::create(&dir).unwrap();
    file.write_all(b"dropped").unwrap();
    drop(file);
    assert!(scratch.names().is_empty());

    let unwound = std::panic::catch_unwind(|| {
        let mut file = TempFile::create(&dir).unwrap();
        file.write_all(b"panicked").unwrap();
        panic!("in the middle of an upload");
    });
    assert!(unwound.is_err());
    assert!(scratch.names().is_empty());
}

#[test]
fn a_bad_name_is_refused_and_the_file_removed() {
    let scratch = Scratch::new("bad-names");
    let dir = open(&scratch);
    for bad in [
        "a/b",
        "../x",
        "nul\0byte",
        "",
        "..",
        ".oneloop-upload-x",
        ".oneloop-upload",
        "a\\b",
    ] {
        let mut file = TempFile::create(&dir).unwrap();
        file.write_all(b"x").unwrap();
        let error = file.commit(bad).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        assert!(scratch.names().is_empty(), "{bad:?}: {:?}", scratch.names());
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped; `None` (after a note
/// on stderr) where this process may not mount.
struct Tmpfs {
    scratch: Scratch,
}

impl Tmpfs {
    fn mount(name: &str, options: &str) -> Option<Tmpfs> {
        let scratch = Scratch::new(name);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&scratch.path)
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { scratch }),
            _ => {
                // Past the harness's capture, so that the skip shows in a plain `cargo test`.
                use std::io::Write as _;
                let line = "skipped: needs root (to mount a tmpfs)\n";
                let _ = std::io::stderr().write_all(line.as_bytes());
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.scratch.path).status();
    }
}

#[test]
fn a_full_disk_fails_the_write_and_removes_the_file() {
    let Some(tmpfs) = Tmpfs::mount("full", "size=64k") else {
        return;
    };
    let dir = open(&tmpfs.scratch);
    let mut file = TempFile::create(&dir).unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    let error = (0..64)
        .find_map(|_| file.write_all(&chunk).err())
        .expect("64 KiB of tmpfs took 1 MiB");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    // Removed at once, freeing the space; the upload can no longer be committed.
    assert!(tmpfs.scratch.names().is_empty());
    assert!(file.write_all(b"more").is_err());
    assert!(file.commit("full.bin").is_err());
    assert!(tmpfs.scratch.names().is_empty());
    // And the space is really back.
    assert_eq!(store(&dir, "small.txt", b"fits"), "small.txt");
}

#[test]
fn a_read_only_directory_is_refused_at_open_even_for_root() {
    let Some(tmpfs) = Tmpfs::mount("read-only", "ro,size=64k") else {
        return;
    };
    let text = UploadDir::open(&tmpfs.scratch.path)
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with(&tmpfs.scratch.path.display().to_string()),
        "{text}"
    );
    assert!(text.contains("read-only file system"), "{text}");
}

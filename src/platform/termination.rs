//! `--termination-log`: one short line saying why lastcall ended, for the platform to show.
//!
//! Kubernetes mounts `/dev/termination-log` into every container and, when the container
//! ends, shows the file's first 4096 bytes as the container's termination message
//! (`kubectl describe pod`, `status.containerStatuses[].state.terminated.message`). So the
//! line is cut to 4096 bytes at a character boundary, holds no newline, and is written
//! without a trailing one: the platform shows the bytes as they are. What to say, and when,
//! is the supervisor's decision; this module only writes it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The most the platform reads (Kubernetes' limit per container).
pub const MAX_BYTES: usize = 4096;

/// Where Kubernetes expects the message by default (`terminationMessagePath`).
pub const KUBERNETES_PATH: &str = "/dev/termination-log";

/// The default of `--termination-log`: Kubernetes' file if it exists (Kubernetes creates it
/// for every container), else none.
pub fn default_path() -> Option<PathBuf> {
    existing(Path::new(KUBERNETES_PATH))
}

fn existing(path: &Path) -> Option<PathBuf> {
    path.exists().then(|| path.to_path_buf())
}

/// `message` as the file holds it: line breaks turned into spaces, at most [`MAX_BYTES`],
/// cut before a character that does not fit whole.
pub fn one_line(message: &str) -> String {
    let mut line: String =
        message.chars().map(|c| if matches!(c, '\n' | '\r') { ' ' } else { c }).collect();
    if line.len() > MAX_BYTES {
        let mut end = MAX_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// Why the message was not written.
#[derive(Debug)]
pub enum NotWritten {
    /// What is at the path is not for lastcall to write: a symbolic link (lastcall writes as
    /// root, and whoever owns the directory may have put it there), a FIFO or socket (a write
    /// could wait for a reader forever), a block device. The words say which.
    Refused(&'static str),
    /// The file could not be opened or written: missing directory, read-only, a directory.
    Failed(std::io::Error),
}

impl std::fmt::Display for NotWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotWritten::Refused(what) => {
                write!(f, "it is {what}, not a regular file or a character device")
            }
            NotWritten::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The mode of a file lastcall creates: the platform reads it, nobody else writes it.
const NEW_FILE_MODE: u32 = 0o644;

/// Replaces the file's contents with `message` as [`one_line`] makes it, in one write, if
/// the path names a regular file (created if missing) or a character device. Nothing here
/// can wait: the open neither follows a link nor waits for a FIFO's reader, and the write
/// does not block. The error is for the caller to log.
pub fn write_termination_log(path: &Path, message: &str) -> Result<(), NotWritten> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(NEW_FILE_MODE)
        // std adds O_CLOEXEC. No O_TRUNC: nothing is truncated before it is known to be a
        // regular file.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => NotWritten::Refused("a symbolic link"),
            // O_WRONLY|O_NONBLOCK on a FIFO without a reader; any open of a socket.
            Some(libc::ENXIO) => NotWritten::Refused("a FIFO with no reader, or a socket"),
            _ => NotWritten::Failed(e),
        })?;
    // The kind of what was opened, not of what the path named a moment before.
    let kind = file.metadata().map_err(NotWritten::Failed)?.file_type();
    if kind.is_file() {
        file.set_len(0).map_err(NotWritten::Failed)?;
    } else if !kind.is_char_device() {
        return Err(NotWritten::Refused(match kind {
            k if k.is_fifo() => "a FIFO",
            k if k.is_socket() => "a socket",
            k if k.is_block_device() => "a block device",
            _ => "of another kind",
        }));
    }
    let line = one_line(message);
    let written = (&file).write(line.as_bytes()).map_err(NotWritten::Failed)?;
    if written < line.len() {
        let short = format!("wrote {written} of {} bytes", line.len());
        return Err(NotWritten::Failed(std::io::Error::other(short)));
    }
    Ok(())
}

/// Writes `message` to `path` if there is one; no termination message is no reason to change
/// how lastcall exits. A file that cannot be written is said at debug (a read-only or missing
/// file is common and harmless); a file lastcall refuses to write, at warn: something other
/// than a file was put at the path, and the platform will show no message.
pub fn record(path: Option<&Path>, message: &str) {
    let Some(path) = path else {
        return;
    };
    match write_termination_log(path, message) {
        Ok(()) => log::debug!("wrote the termination message to {}", path.display()),
        Err(e @ NotWritten::Refused(_)) => {
            log::warn!("not writing the termination message to {}: {e}", path.display())
        }
        Err(e) => log::debug!("cannot write the termination message to {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    /// A fresh directory of the test's own, and a path in it.
    fn temp(test: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lastcall-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("termination-log");
        (dir, path)
    }

    #[test]
    fn writes_one_line_replacing_what_was_there() {
        let (dir, path) = temp("replace");
        std::fs::write(&path, "an older and much longer message from a previous run").unwrap();
        write_termination_log(
            &path,
            "child exited 0 after SIGTERM (drain 5.0s, stopped 1.2s later)",
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "child exited 0 after SIGTERM (drain 5.0s, stopped 1.2s later)"
        );
        write_termination_log(&path, "exec failed:\n/app/server: not found\r\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "exec failed: /app/server: not found  "
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let (dir, path) = temp("cut");
        assert_eq!(one_line(&"a".repeat(MAX_BYTES)).len(), MAX_BYTES);
        assert_eq!(one_line(&"a".repeat(MAX_BYTES + 1)).len(), MAX_BYTES);
        // 'é' is 2 bytes, '€' 3, '𝄞' 4: every offset of the cut against each of them.
        for ch in ['é', '€', '𝄞'] {
            for pad in 0..4 {
                let message = format!("{}{}", "a".repeat(pad), ch.to_string().repeat(MAX_BYTES));
                let line = one_line(&message);
                assert!(line.len() <= MAX_BYTES && line.len() > MAX_BYTES - ch.len_utf8());
                assert!(message.starts_with(&line), "a prefix, valid UTF-8 by its type");
                write_termination_log(&path, &message).unwrap();
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(String::from_utf8(bytes).unwrap(), line, "never partial UTF-8");
            }
        }
        // Newlines count after being replaced, and a cut never leaves a newline.
        let line = one_line(&"\n".repeat(MAX_BYTES * 2));
        assert_eq!(line, " ".repeat(MAX_BYTES));
        assert_eq!(one_line(""), "");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failures_are_errors_not_panics() {
        assert!(write_termination_log(Path::new("/nonexistent/dir/termination-log"), "x").is_err());
        let (dir, _) = temp("fail");
        assert!(write_termination_log(&dir, "x").is_err(), "a directory");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_a_regular_file_or_a_character_device_is_written() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path) = temp("kinds");
        // A new file: created, written, and not writable by others.
        write_termination_log(&path, "child exited 0").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!((mode & 0o600, mode & 0o022), (0o600, 0), "mode {mode:o}");
        // A link is not followed, dangling or not: neither its target nor a new file written.
        let target = dir.join("target");
        std::fs::write(&target, "someone else's").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let refused = write_termination_log(&link, "x");
        assert!(matches!(refused, Err(NotWritten::Refused("a symbolic link"))), "{refused:?}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "someone else's");
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("nothing"), &dangling).unwrap();
        assert!(matches!(write_termination_log(&dangling, "x"), Err(NotWritten::Refused(_))));
        assert!(!dir.join("nothing").exists(), "a link's target was created");
        // A FIFO: without a reader, refused at once; with one, refused on what was opened.
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let refused = write_termination_log(&fifo, "x");
        assert!(matches!(refused, Err(NotWritten::Refused(w)) if w.contains("FIFO")));
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let refused = write_termination_log(&fifo, "x");
        assert!(matches!(refused, Err(NotWritten::Refused("a FIFO"))), "{refused:?}");
        let mut heard = String::new();
        let _ = (&reader).read_to_string(&mut heard);
        assert_eq!(heard, "", "nothing written to the FIFO");
        // A character device is written (the platform may mount one).
        write_termination_log(Path::new("/dev/null"), "child exited 0").unwrap();
        assert_eq!(
            refused.unwrap_err().to_string(),
            "it is a FIFO, not a regular file or a character device"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_default_is_the_kubernetes_file_only_when_it_exists() {
        let (dir, path) = temp("default");
        assert_eq!(existing(&path), None);
        std::fs::write(&path, "").unwrap();
        assert_eq!(existing(&path), Some(path.clone()));
        assert_eq!(default_path().is_some(), Path::new(KUBERNETES_PATH).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

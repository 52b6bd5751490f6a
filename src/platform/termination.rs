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

/// Replaces the file's contents with `message` as [`one_line`] makes it, in one write. The
/// error is for the caller to log (at debug: a missing or read-only file is no reason to
/// change lastcall's exit status).
pub fn write_termination_log(path: &Path, message: &str) -> std::io::Result<()> {
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    file.write_all(one_line(message).as_bytes())
}

/// Writes `message` to `path` if there is one; a failure is logged at debug and otherwise
/// ignored: no termination message is no reason to change how lastcall exits.
pub fn record(path: Option<&Path>, message: &str) {
    let Some(path) = path else {
        return;
    };
    match write_termination_log(path, message) {
        Ok(()) => log::debug!("wrote the termination message to {}", path.display()),
        Err(e) => log::debug!("cannot write the termination message to {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_default_is_the_kubernetes_file_only_when_it_exists() {
        let (dir, path) = temp("default");
        assert_eq!(existing(&path), None);
        std::fs::write(&path, "").unwrap();
        assert_eq!(existing(&path), Some(path.clone()));
        assert_eq!(default_path().is_some(), Path::new(KUBERNETES_PATH).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

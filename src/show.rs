//! How lastcall writes times for people: in log lines, `?verbose` and systemd's STATUS=.

use std::time::Duration;

/// A duration the way an operator reads it in a log line: `250ms`, `6.2s`.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::ZERO), "0ms");
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_millis(999)), "999ms");
        assert_eq!(duration(Duration::from_secs(1)), "1.0s");
        assert_eq!(duration(Duration::from_millis(6_249)), "6.2s");
        assert_eq!(duration(Duration::from_secs(90)), "90.0s");
    }
}

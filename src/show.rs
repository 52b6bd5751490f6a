//! How lastcall writes times and sizes for people: in log lines, `?verbose`, systemd's
//! STATUS= and the termination message.

use std::time::Duration;

/// A duration the way an operator reads it in a log line: `250ms`, `6.2s`.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Bytes in binary units with at most one decimal: `512 B`, `32 MiB`, `1.5 GiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // The largest unit that is at most n; then tenths of it, rounded half up. A value that
    // rounds up to 1024 of a unit is shown in the next one.
    let mut power = (63 - n.leading_zeros()) as usize / 10;
    let tenths = |power: usize| (u128::from(n) * 10 + (1u128 << (10 * power)) / 2) >> (10 * power);
    let mut t = tenths(power);
    if t >= 10240 && power < UNITS.len() {
        power += 1;
        t = tenths(power);
    }
    let unit = UNITS[power - 1];
    match t % 10 {
        0 => format!("{} {unit}", t / 10),
        d => format!("{}.{d} {unit}", t / 10),
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

    #[test]
    fn byte_sizes_as_people_write_them() {
        let cases: [(u64, &str); 14] = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (32 << 20, "32 MiB"),
            (256 << 20, "256 MiB"),
            (1536 << 20, "1.5 GiB"),
            (1_000_000_000, "953.7 MiB"),
            ((1 << 30) - 1, "1 GiB"),
            ((1 << 30) - (60 << 20), "964 MiB"),
            ((1 << 30) + (50 << 20), "1 GiB"),
            ((1 << 30) + (52 << 20), "1.1 GiB"),
            (5 << 40, "5 TiB"),
            (u64::MAX, "16 EiB"),
        ];
        for (n, text) in cases {
            assert_eq!(format_bytes(n), text, "{n}");
        }
    }
}

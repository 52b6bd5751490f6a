//! lastcall's log lines on stderr: text for people, or JSON for log collectors.
//!
//! Text is `lastcall: message` (`lastcall: [DEBUG] message` at debug and trace): only the
//! message, which must read well on its own. JSON (`--log-format json`) is one object per
//! line: `ts` (RFC 3339, UTC, milliseconds), `level`, `msg`, then the fields the line was
//! logged with ([`log_fields`]) in their order: text as strings, integers as integers,
//! durations as seconds with three decimals.
//!
//! Each line goes out in one `write`, so that it does not interleave mid-line with the
//! child's output on the same stderr. The JSON is written here: a flat object of strings and
//! numbers needs only RFC 8259's string escaping.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// `--log-format` / `LASTCALL_LOG_FORMAT`.
    pub fn parse(text: &str) -> Result<Format, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("'{text}' is not a log format (text or json)")),
        }
    }
}

/// One field of a JSON line, after `ts`, `level` and `msg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// A JSON string.
    Text(String),
    /// A JSON integer.
    Int(i64),
    /// Seconds with three decimals: milliseconds are enough for a log line.
    Secs(Duration),
}

/// Writes lines at `level` and the more severe ones to stderr, in `format`.
pub struct Logger {
    format: Format,
    level: LevelFilter,
}

/// The process's logger, once [`init`] has run: the `log` macros reach it through the `log`
/// crate, [`log_fields`] directly.
static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger for the whole process; a second call changes nothing.
pub fn init(format: Format, level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| Logger { format, level });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.level);
    }
}

/// Logs `msg` at `level` with `fields` after it (JSON only: text shows the message alone).
/// The keys are neither `ts`, `level` nor `msg`, and each comes once. Nothing before
/// [`init`].
pub fn log_fields(level: Level, msg: &str, fields: &[(&str, Field)]) {
    if let Some(logger) = LOGGER.get()
        && level <= logger.level
    {
        logger.write(&logger.line(level, format_args!("{msg}"), fields, SystemTime::now()));
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            self.write(&self.line(record.level(), *record.args(), &[], SystemTime::now()));
        }
    }

    fn flush(&self) {}
}

impl Logger {
    /// One line, with its newline.
    fn line(
        &self,
        level: Level,
        msg: fmt::Arguments,
        fields: &[(&str, Field)],
        now: SystemTime,
    ) -> String {
        match self.format {
            Format::Text => text_line(level, msg),
            Format::Json => json_line(level, msg, fields, now),
        }
    }

    /// One write; stderr is unbuffered. Nothing to do if it fails.
    fn write(&self, line: &str) {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

fn text_line(level: Level, msg: fmt::Arguments) -> String {
    match level {
        Level::Debug | Level::Trace => format!("lastcall: [{level}] {msg}\n"),
        _ => format!("lastcall: {msg}\n"),
    }
}

fn json_line(
    level: Level,
    msg: fmt::Arguments,
    fields: &[(&str, Field)],
    now: SystemTime,
) -> String {
    let mut line = String::with_capacity(128);
    line.push_str("{\"ts\":\"");
    line.push_str(&rfc3339_utc(now));
    line.push_str("\",\"level\":\"");
    line.push_str(level_name(level));
    // The message is escaped as it is formatted into the line, without a copy.
    line.push_str("\",\"msg\":\"");
    let _ = write!(Escaper(&mut line), "{msg}");
    line.push('"');
    for (key, value) in fields {
        line.push(',');
        push_string(&mut line, key);
        line.push(':');
        match value {
            Field::Text(text) => push_string(&mut line, text),
            Field::Int(n) => {
                let _ = write!(line, "{n}");
            }
            Field::Secs(d) => {
                let _ = write!(line, "{:.3}", d.as_secs_f64());
            }
        }
    }
    line.push_str("}\n");
    line
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// `text` as a JSON string, quotes included.
fn push_string(out: &mut String, text: &str) {
    out.push('"');
    let _ = Escaper(out).write_str(text);
    out.push('"');
}

/// Escapes what it is given per RFC 8259 as it appends it: `"` and `\`, and every control
/// character below U+0020 (as `\n`, `\r`, `\t` or `\u00XX`). The rest is UTF-8 as it came:
/// a `&str` is valid UTF-8, so the line is too.
struct Escaper<'a>(&'a mut String);

impl std::fmt::Write for Escaper<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut plain = 0;
        for (i, c) in text.char_indices() {
            let escaped = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if c < ' ' => "",
                _ => continue,
            };
            self.0.push_str(&text[plain..i]);
            match escaped {
                "" => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                _ => self.0.push_str(escaped),
            }
            plain = i + c.len_utf8();
        }
        self.0.push_str(&text[plain..]);
        Ok(())
    }
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-12-01T06:03:58.123Z`. Years outside
/// 0000-9999, which RFC 3339 cannot write, are clamped to its ends.
fn rfc3339_utc(time: SystemTime) -> String {
    let millis: i128 = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_millis() as i128,
        Err(before) => -(before.duration().as_millis() as i128),
    };
    const DAY: i128 = 86_400_000;
    // 0000-01-01 and 10000-01-01 in days since 1970-01-01.
    const FIRST_DAY: i128 = -719_528;
    const END_DAY: i128 = 2_932_897;
    let millis = millis.clamp(FIRST_DAY * DAY, END_DAY * DAY - 1);
    let (days, in_day) = (millis.div_euclid(DAY), millis.rem_euclid(DAY));
    let (year, month, day) = civil_from_days(days as i64);
    let (secs, ms) = (in_day / 1000, in_day % 1000);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (negative before it).
/// Counted in 400-year eras from 0000-03-01, so that the leap day ends each year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // 0..=146096
    // Years into the era: less a day every 4 years, plus one back every 100, less one
    // every 400 (the era's last day).
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, of 31 30 31 30 31 31 30 31 30 31 31 (28/29) days.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, millis: u64) -> SystemTime {
        match secs >= 0 {
            true => UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_millis(millis),
            false => {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                    + Duration::from_millis(millis)
            }
        }
    }

    fn text(level: Level, msg: fmt::Arguments) -> String {
        Logger { format: Format::Text, level: LevelFilter::Trace }.line(level, msg, &[], UNIX_EPOCH)
    }

    fn json(level: Level, msg: fmt::Arguments, fields: &[(&str, Field)]) -> String {
        let logger = Logger { format: Format::Json, level: LevelFilter::Trace };
        logger.line(level, msg, fields, at(1_796_105_038, 123))
    }

    #[test]
    fn text_lines() {
        assert_eq!(text(Level::Error, format_args!("a")), "lastcall: a\n");
        assert_eq!(text(Level::Warn, format_args!("b {}", 1)), "lastcall: b 1\n");
        assert_eq!(text(Level::Info, format_args!("c")), "lastcall: c\n");
        assert_eq!(text(Level::Debug, format_args!("d")), "lastcall: [DEBUG] d\n");
        assert_eq!(text(Level::Trace, format_args!("e")), "lastcall: [TRACE] e\n");
        // The message as it is: nothing escaped, nothing trimmed, a newline added.
        assert_eq!(text(Level::Info, format_args!("")), "lastcall: \n");
        assert_eq!(text(Level::Info, format_args!("two\nlines")), "lastcall: two\nlines\n");
        assert_eq!(
            text(Level::Warn, format_args!("tab\t\"q\" \\ \u{1b}[31m é€𝄞")),
            "lastcall: tab\t\"q\" \\ \u{1b}[31m é€𝄞\n"
        );
        assert_eq!(text(Level::Debug, format_args!("ends\n")), "lastcall: [DEBUG] ends\n\n");
        // Text shows no fields.
        let fields = [("pid", Field::Int(7))];
        let logger = Logger { format: Format::Text, level: LevelFilter::Trace };
        assert_eq!(
            logger.line(Level::Info, format_args!("f"), &fields, UNIX_EPOCH),
            "lastcall: f\n"
        );
    }

    #[test]
    fn json_lines_have_ts_level_msg_and_the_fields_in_order() {
        let sig = "SIGTERM";
        let line = json(
            Level::Info,
            format_args!("sending {sig} to child {}", 7465),
            &[
                ("phase", Field::Text("stopping".into())),
                ("pid", Field::Int(7465)),
                ("signal", Field::Text(sig.into())),
                ("delay_s", Field::Secs(Duration::from_secs(5))),
                ("grace_s", Field::Secs(Duration::from_millis(20_250))),
                ("status", Field::Int(-1)),
                ("took_s", Field::Secs(Duration::from_micros(1_234_560))),
                ("c", Field::Text("\"".into())),
            ],
        );
        assert_eq!(
            line,
            "{\"ts\":\"2026-12-01T06:03:58.123Z\",\"level\":\"info\",\
             \"msg\":\"sending SIGTERM to child 7465\",\"phase\":\"stopping\",\"pid\":7465,\
             \"signal\":\"SIGTERM\",\"delay_s\":5.000,\"grace_s\":20.250,\"status\":-1,\
             \"took_s\":1.235,\"c\":\"\\\"\"}\n"
        );
        assert_eq!(
            json(Level::Warn, format_args!("x\ny"), &[]),
            "{\"ts\":\"2026-12-01T06:03:58.123Z\",\"level\":\"warn\",\"msg\":\"x\\ny\"}\n"
        );
        for (level, name) in [
            (Level::Error, "error"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            assert!(json(level, format_args!(""), &[]).contains(&format!("\"level\":\"{name}\"")));
        }
    }

    #[test]
    fn seconds_have_three_decimals() {
        let secs = |d| json(Level::Info, format_args!(""), &[("s", Field::Secs(d))]);
        for (d, text) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_millis(1), "0.001"),
            (Duration::from_micros(999_499), "0.999"),
            (Duration::from_millis(5_004), "5.004"),
            (Duration::from_secs(86_400), "86400.000"),
        ] {
            assert!(secs(d).ends_with(&format!(",\"s\":{text}}}\n")), "{d:?}: {}", secs(d));
        }
        let int = |n| json(Level::Info, format_args!(""), &[("n", Field::Int(n))]);
        assert!(int(i64::MIN).ends_with(",\"n\":-9223372036854775808}\n"));
        assert!(int(0).ends_with(",\"n\":0}\n"));
    }

    #[test]
    fn strings_are_escaped_per_rfc_8259() {
        let mut out = String::new();
        push_string(&mut out, "a\"b\\c\nd\re\tf\u{0}\u{1f}\u{7f} é€𝄞\u{2028}");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0000\\u001f\u{7f} é€𝄞\u{2028}\"");
        let mut all = String::new();
        push_string(&mut all, &(0u8..0x20).map(char::from).collect::<String>());
        assert!(all.bytes().all(|b| b >= 0x20), "no raw control character is left");
        // Keys are escaped as well.
        let line = json(Level::Info, format_args!(""), &[("k\"", Field::Text("v\n".into()))]);
        assert!(line.ends_with(",\"k\\\"\":\"v\\n\"}\n"), "{line}");
    }

    #[test]
    fn timestamps_for_known_dates() {
        let cases: [(i64, u64, &str); 14] = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (1_796_105_038, 123, "2026-12-01T06:03:58.123Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000Z"), // leap (divisible by 400)
            (951_868_800, 0, "2000-03-01T00:00:00.000Z"),
            (1_709_164_800, 999, "2024-02-29T00:00:00.999Z"),
            (4_107_456_000, 0, "2100-02-28T00:00:00.000Z"), // 2100 is not a leap year
            (4_107_542_400, 0, "2100-03-01T00:00:00.000Z"),
            (2_147_483_647, 0, "2038-01-19T03:14:07.000Z"), // i32 seconds end here
            (2_147_483_648, 1, "2038-01-19T03:14:08.001Z"),
            (4_294_967_296, 0, "2106-02-07T06:28:16.000Z"), // and u32 seconds here
            (13_574_563_200, 0, "2400-02-29T00:00:00.000Z"),
            (253_402_300_799, 999, "9999-12-31T23:59:59.999Z"),
            (-1, 0, "1969-12-31T23:59:59.000Z"),
            (-2_208_988_800, 0, "1900-01-01T00:00:00.000Z"),
        ];
        for (secs, millis, text) in cases {
            assert_eq!(rfc3339_utc(at(secs, millis)), text, "{secs}");
        }
        // Outside what RFC 3339 can write: clamped, not wrapped or panicking.
        assert_eq!(rfc3339_utc(at(253_402_300_800, 0)), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_utc(at(-62_167_219_201, 0)), "0000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(at(-62_167_219_200, 0)), "0000-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        assert_eq!(rfc3339_utc(far), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn formats_parse() {
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert_eq!(Format::parse(" TEXT "), Ok(Format::Text));
        assert_eq!(Format::parse("yaml").unwrap_err(), "'yaml' is not a log format (text or json)");
    }

    /// Every JSON line is exactly one JSON object that Python's json module reads back to
    /// what was logged; every timestamp is the date Python computes for the same instant.
    #[test]
    fn python_reads_every_line_back() {
        use std::io::{Read, Write};
        use std::process::{Command, Stdio};
        let has_python = Command::new("python3")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_python {
            assert!(std::env::var_os("CI").is_none(), "CI is set, and this test needs python3");
            let _ = writeln!(std::io::stderr(), "skipped: this test needs python3");
            return;
        }
        let mut messages: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "\"quoted\" \\back\\slash\\".into(),
            (0u32..0x80).filter_map(char::from_u32).collect(),
            "é€𝄞 \u{2028}\u{2029} \u{feff} \u{10ffff}".into(),
            "line\nbreaks\r\nand\ttabs".into(),
            "x".repeat(100_000),
        ];
        // Pseudo-random code points: a fixed seed, so a failure repeats.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200 {
            let mut s = String::new();
            for _ in 0..40 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let range = if seed.is_multiple_of(3) { 0x80 } else { 0x11_0000 };
                s.extend(char::from_u32((seed >> 20) as u32 % range));
            }
            messages.push(s);
        }
        // From 0001-01-01 (Python's first year) to near 9999-12-31, in 300 uneven steps.
        let times: Vec<i64> =
            (0..300).map(|i| -62_135_596_800_000 + i * 1_051_792_991_999).collect();
        let mut input = String::new();
        for (i, message) in messages.iter().enumerate() {
            let t = times[i % times.len()];
            let logger = Logger { format: Format::Json, level: LevelFilter::Trace };
            let fields = [
                ("pid", Field::Int(i as i64)),
                ("took_s", Field::Secs(Duration::from_millis(i as u64 * 7))),
                ("text", Field::Text(message.clone())),
                ("status", Field::Int(-(i as i64))),
            ];
            let time = match t >= 0 {
                true => UNIX_EPOCH + Duration::from_millis(t as u64),
                false => UNIX_EPOCH - Duration::from_millis(t.unsigned_abs()),
            };
            input.push_str(&t.to_string());
            input.push(' ');
            input.push_str(&logger.line(Level::Info, format_args!("{message}"), &fields, time));
        }
        let script = r#"
import datetime, json, sys
def reject(name):
    raise ValueError("not JSON: " + name)
def pairs(items):
    keys = [k for k, _ in items]
    assert len(keys) == len(set(keys)), keys
    return dict(items)
out = sys.stdout.buffer
data = sys.stdin.buffer.read()
assert data.endswith(b"\n")
for raw in data.split(b"\n")[:-1]:
    millis, line = raw.split(b" ", 1)
    obj = json.loads(line.decode("utf-8", "strict"), parse_constant=reject, object_pairs_hook=pairs)
    assert list(obj)[:3] == ["ts", "level", "msg"], list(obj)
    assert obj["msg"] == obj["text"]
    assert type(obj["pid"]) is int and type(obj["status"]) is int
    assert type(obj["took_s"]) is float
    assert obj["took_s"] == obj["pid"] * 7 / 1000, (obj["took_s"], obj["pid"])
    when = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(milliseconds=int(millis))
    expected = "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (when.year, when.month, when.day,
        when.hour, when.minute, when.second, when.microsecond // 1000)
    assert obj["ts"] == expected, (obj["ts"], expected)
    body = obj["msg"].encode("utf-8")
    out.write(b"%d\n" % len(body) + body)
"#;
        let mut python = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = python.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let mut back = Vec::new();
        python.stdout.take().unwrap().read_to_end(&mut back).unwrap();
        writer.join().unwrap().unwrap();
        assert!(python.wait().unwrap().success(), "python3 rejected a line (see its stderr)");
        // Length-prefixed messages as Python decoded them.
        let mut rest = &back[..];
        for message in &messages {
            let newline = rest.iter().position(|&b| b == b'\n').unwrap();
            let len: usize = std::str::from_utf8(&rest[..newline]).unwrap().parse().unwrap();
            let body = &rest[newline + 1..newline + 1 + len];
            assert_eq!(body, message.as_bytes());
            rest = &rest[newline + 1 + len..];
        }
        assert!(rest.is_empty());
    }
}

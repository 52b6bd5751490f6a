//! lastcall's log lines on stderr, as text for people or as JSON for log collectors.
//!
//! Text is `lastcall: message` (`lastcall: [DEBUG] message` at debug and trace), byte for
//! byte what the simplelog setup this module replaced printed. JSON (`--log-format json`) is
//! one object per line: `ts` (RFC 3339, UTC, milliseconds), `level`, `msg`, then the record's
//! key-values (the `log` crate's `kv`: `log::info!(pid = 7, signal:% = sig; "...")`) as
//! fields, integers as JSON integers, floats (durations in seconds) with three decimals,
//! anything else as a string. Text shows only the message, which must read well on its own.
//!
//! Each line goes out in one `write`, so it does not interleave mid-line with the child's
//! output on the same stderr. The JSON is written by hand: a line is a flat object of
//! strings and numbers, which escaping per RFC 8259 covers in a few lines. serde_json, built
//! into the release binary in place of it, added 10,352 bytes as an order-keeping map
//! (plus indexmap, hashbrown, itoa, ryu, memchr) and 928 bytes used only to escape strings.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{self, Key, Value, VisitSource, VisitValue};
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

pub struct Logger {
    format: Format,
    level: LevelFilter,
}

/// Installs the logger for the whole process; a second call changes nothing.
pub fn init(format: Format, level: LevelFilter) {
    // Leaked once: the logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(Logger { format, level }))).is_ok() {
        log::set_max_level(level);
    }
}

/// Logs `line` at `level` with `fields` as its key-values (what `log::info!(k = v; ...)`
/// does, for fields known only at run time).
pub fn log_fields(level: Level, line: &str, fields: &dyn kv::Source) {
    if level <= log::max_level() {
        let args = format_args!("{line}");
        let record = Record::builder()
            .level(level)
            .target(module_path!())
            .args(args)
            .key_values(fields)
            .build();
        log::logger().log(&record);
    }
}

/// A shutdown step's data as key-values: each field there is, seconds as floats.
impl kv::Source for crate::machine::Fields {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), kv::Error> {
        if let Some(phase) = self.phase {
            visitor.visit_pair(Key::from("phase"), Value::from(phase))?;
        }
        if let Some(pid) = self.pid {
            visitor.visit_pair(Key::from("pid"), Value::from(i64::from(pid.as_raw())))?;
        }
        if let Some(sig) = &self.signal {
            visitor.visit_pair(Key::from("signal"), Value::from_display(sig))?;
        }
        for (key, duration) in [("delay_s", self.delay), ("grace_s", self.grace)] {
            if let Some(d) = duration {
                visitor.visit_pair(Key::from(key), Value::from(d.as_secs_f64()))?;
            }
        }
        if let Some(status) = self.status {
            visitor.visit_pair(Key::from("status"), Value::from(u64::from(status)))?;
        }
        if let Some(took) = self.took {
            visitor.visit_pair(Key::from("took_s"), Value::from(took.as_secs_f64()))?;
        }
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let line = self.line(record, SystemTime::now());
            // One write; stderr is unbuffered. Nothing to do if it fails.
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

impl Logger {
    /// The record as one line, with its newline.
    fn line(&self, record: &Record, now: SystemTime) -> String {
        match self.format {
            Format::Text => text_line(record),
            Format::Json => json_line(record, now),
        }
    }
}

fn text_line(record: &Record) -> String {
    match record.level() {
        Level::Debug | Level::Trace => {
            format!("lastcall: [{}] {}\n", record.level(), record.args())
        }
        _ => format!("lastcall: {}\n", record.args()),
    }
}

/// The fields every JSON line starts with; a key-value of the same name is left out.
const RESERVED: [&str; 3] = ["ts", "level", "msg"];

fn json_line(record: &Record, now: SystemTime) -> String {
    let mut line = String::with_capacity(128);
    line.push_str("{\"ts\":\"");
    line.push_str(&rfc3339_utc(now));
    line.push_str("\",\"level\":\"");
    line.push_str(level_name(record.level()));
    line.push_str("\",\"msg\":");
    // The message is formatted into the line as it is escaped, without a copy.
    line.push('"');
    let _ = write!(Escaper(&mut line), "{}", record.args());
    line.push('"');
    let _ = record.key_values().visit(&mut Fields(&mut line));
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

/// Appends `,"key":value` for each key-value of a record.
struct Fields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        if RESERVED.contains(&key.as_str()) {
            return Ok(());
        }
        self.0.push(',');
        push_string(self.0, key.as_str());
        self.0.push(':');
        value.visit(JsonValue(self.0))
    }
}

/// Writes one value as JSON: numbers as numbers, the rest as strings.
struct JsonValue<'a>(&'a mut String);

impl<'v> VisitValue<'v> for JsonValue<'_> {
    fn visit_any(&mut self, value: Value) -> Result<(), kv::Error> {
        // A Display or Debug capture (`signal:% = sig`).
        self.0.push('"');
        let _ = write!(Escaper(self.0), "{value}");
        self.0.push('"');
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0.push_str("null");
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    /// Floats are durations in seconds: milliseconds are enough. JSON has no NaN or
    /// infinity.
    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        match value.is_finite() {
            true => {
                let _ = write!(self.0, "{value:.3}");
            }
            false => self.0.push_str("null"),
        }
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0.push_str(if value { "true" } else { "false" });
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        push_string(self.0, value);
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), kv::Error> {
        push_string(self.0, value.encode_utf8(&mut [0; 4]));
        Ok(())
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
pub fn rfc3339_utc(time: SystemTime) -> String {
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
    use std::time::Duration;

    fn at(secs: i64, millis: u64) -> SystemTime {
        match secs >= 0 {
            true => UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_millis(millis),
            false => {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                    + Duration::from_millis(millis)
            }
        }
    }

    /// Formats one record with key-values, as the `log` macros would build it.
    fn json(level: Level, msg: std::fmt::Arguments, kvs: &[(&str, Value)]) -> String {
        let kvs: Vec<(&str, Value)> = kvs.to_vec();
        let record = Record::builder().level(level).args(msg).key_values(&kvs).build();
        let logger = Logger { format: Format::Json, level: LevelFilter::Trace };
        logger.line(&record, at(1_796_105_038, 123))
    }

    fn text(level: Level, msg: std::fmt::Arguments) -> String {
        let record = Record::builder().level(level).args(msg).build();
        Logger { format: Format::Text, level: LevelFilter::Trace }.line(&record, UNIX_EPOCH)
    }

    #[test]
    fn text_lines_are_as_before() {
        assert_eq!(text(Level::Error, format_args!("a")), "lastcall: a\n");
        assert_eq!(text(Level::Warn, format_args!("b {}", 1)), "lastcall: b 1\n");
        assert_eq!(text(Level::Info, format_args!("c")), "lastcall: c\n");
        assert_eq!(text(Level::Debug, format_args!("d")), "lastcall: [DEBUG] d\n");
        assert_eq!(text(Level::Trace, format_args!("e")), "lastcall: [TRACE] e\n");
    }

    /// The logger this one replaced, configured as src/main.rs configured it, prints the
    /// same bytes for the same records.
    #[test]
    fn text_lines_match_simplelog_byte_for_byte() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        const PREFIX: &[simplelog::FormatItem<'static>] =
            &[simplelog::FormatItem::StringLiteral("lastcall:")];
        let config = simplelog::ConfigBuilder::new()
            .set_time_format_custom(PREFIX)
            .set_time_level(LevelFilter::Error)
            .set_max_level(LevelFilter::Debug)
            .set_thread_level(LevelFilter::Off)
            .set_target_level(LevelFilter::Off)
            .set_location_level(LevelFilter::Off)
            .build();
        let out = Shared::default();
        let old = simplelog::WriteLogger::new(
            LevelFilter::Trace,
            config,
            std::io::LineWriter::new(out.clone()),
        );
        let new = Logger { format: Format::Text, level: LevelFilter::Trace };
        let messages = [
            "received SIGTERM: draining, /readyz answers 503; preStop delay 5.0s",
            "",
            "two\nlines",
            "tab\tand \"quotes\" and \\ and \u{1b}[31m and é€𝄞",
            "ends with a newline\n",
        ];
        for level in [Level::Error, Level::Warn, Level::Info, Level::Debug, Level::Trace] {
            for message in messages {
                let args = format_args!("{message}");
                let record = Record::builder().level(level).args(args).build();
                old.log(&record);
                old.flush();
                let before = std::mem::take(&mut *out.0.lock().unwrap());
                assert_eq!(
                    String::from_utf8(before).unwrap(),
                    new.line(&record, SystemTime::now()),
                    "{level} {message:?}"
                );
            }
        }
    }

    #[test]
    fn json_lines_have_ts_level_msg_and_fields() {
        let sig = "SIGTERM";
        let line = json(
            Level::Info,
            format_args!("sending {sig} to child {}", 7465),
            &[
                ("phase", Value::from("stopping")),
                ("pid", Value::from(7465u32)),
                ("signal", Value::from_display(&sig)),
                ("delay_s", Value::from(5.0f64)),
                ("grace_s", Value::from(20.25f64)),
                ("status", Value::from(-1i64)),
                ("took_s", Value::from(1.23456f64)),
                ("ok", Value::from(true)),
                ("none", Value::null()),
                ("nan", Value::from(f64::NAN)),
                ("c", Value::from('"')),
                ("msg", Value::from("shadowed: left out")),
            ],
        );
        assert_eq!(
            line,
            "{\"ts\":\"2026-12-01T06:03:58.123Z\",\"level\":\"info\",\
             \"msg\":\"sending SIGTERM to child 7465\",\"phase\":\"stopping\",\"pid\":7465,\
             \"signal\":\"SIGTERM\",\"delay_s\":5.000,\"grace_s\":20.250,\"status\":-1,\
             \"took_s\":1.235,\"ok\":true,\"none\":null,\"nan\":null,\"c\":\"\\\"\"}\n"
        );
        let warn = json(Level::Warn, format_args!("x"), &[]);
        assert!(warn.contains("\"level\":\"warn\""));
    }

    #[test]
    fn the_kv_macros_reach_the_fields() {
        // What the call sites will write: the log macros' key-value syntax.
        struct Capture(std::sync::Mutex<Vec<String>>);
        impl Log for Capture {
            fn enabled(&self, _: &Metadata) -> bool {
                true
            }
            fn log(&self, record: &Record) {
                self.0.lock().unwrap().push(json_line(record, UNIX_EPOCH));
            }
            fn flush(&self) {}
        }
        let capture = Capture(std::sync::Mutex::new(Vec::new()));
        // The macros check the global level first; no global logger is installed in tests.
        log::set_max_level(LevelFilter::Trace);
        let sig = crate::init::signals::Sig(libc::SIGTERM);
        log::info!(logger: capture, phase = "draining", pid = 42, signal:% = sig, delay_s = 5.0; "received {sig}");
        let lines = capture.0.lock().unwrap();
        assert_eq!(
            lines[0],
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"info\",\"msg\":\"received SIGTERM\",\
             \"phase\":\"draining\",\"pid\":42,\"signal\":\"SIGTERM\",\"delay_s\":5.000}\n"
        );
    }

    #[test]
    fn a_shutdown_steps_fields_become_json_fields() {
        use crate::machine::Fields;
        let fields = Fields {
            phase: Some("stopping"),
            pid: Some(nix::unistd::Pid::from_raw(7465)),
            signal: Some(crate::init::signals::Sig(libc::SIGTERM)),
            delay: None,
            grace: Some(Duration::from_secs(20)),
            status: Some(143),
            took: Some(Duration::from_millis(5_004)),
        };
        let args = format_args!("sending SIGTERM");
        let record = Record::builder().level(Level::Info).args(args).key_values(&fields).build();
        assert_eq!(
            json_line(&record, UNIX_EPOCH),
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"info\",\"msg\":\"sending SIGTERM\",\
             \"phase\":\"stopping\",\"pid\":7465,\"signal\":\"SIGTERM\",\"grace_s\":20.000,\
             \"status\":143,\"took_s\":5.004}\n"
        );
        let record = Record::builder().args(args).key_values(&Fields::NONE).build();
        assert!(json_line(&record, UNIX_EPOCH).ends_with("\"msg\":\"sending SIGTERM\"}\n"));
    }

    #[test]
    fn strings_are_escaped_per_rfc_8259() {
        let mut out = String::new();
        push_string(&mut out, "a\"b\\c\nd\re\tf\u{0}\u{1f}\u{7f} é€𝄞\u{2028}");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0000\\u001f\u{7f} é€𝄞\u{2028}\"");
        let mut all = String::new();
        push_string(&mut all, &(0u8..0x20).map(char::from).collect::<String>());
        assert!(all.bytes().all(|b| b >= 0x20), "no raw control character is left");
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
            let kvs: [(&str, Value); 4] = [
                ("pid", Value::from(i as u64)),
                ("took_s", Value::from(i as f64 / 7.0)),
                ("text", Value::from(message.as_str())),
                ("status", Value::from(-(i as i64))),
            ];
            let time = match t >= 0 {
                true => UNIX_EPOCH + Duration::from_millis(t as u64),
                false => UNIX_EPOCH - Duration::from_millis(t.unsigned_abs()),
            };
            input.push_str(&t.to_string());
            input.push(' ');
            let args = format_args!("{message}");
            let record = Record::builder().level(Level::Info).args(args).key_values(&kvs).build();
            input.push_str(&logger.line(&record, time));
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
    assert round(obj["took_s"], 3) == round(obj["pid"] / 7.0, 3)
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

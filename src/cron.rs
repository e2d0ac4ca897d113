//! Schedules (`HOOK_CRON`, `HOOK_CRON_FILE`): five-field cron lines, UTC,
//! each naming a repository and a branch; parsed within bounds (a bad line
//! names its number and what is wrong) and matched against a minute. No I/O
//! but reading the file; the hook's `cron` thread fires what matches
//! ([docs/schedules.md](../docs/schedules.md)).

use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;

/// At most this many schedules.
pub const MAX_SCHEDULES: usize = 1_000;
/// At most this many bytes in one line.
pub const MAX_LINE: usize = 1_024;
/// At most this many bytes in HOOK_CRON or HOOK_CRON_FILE (lines, comments
/// and blank lines together).
pub const MAX_BYTES: usize = 256 * 1024;

/// Why the schedules cannot be used; the hook refuses to start with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

/// One schedule: when (five fields, as bit sets) and what to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Its line number in HOOK_CRON or HOOK_CRON_FILE (from 1).
    pub line: usize,
    /// The five fields as written, joined by one space.
    pub when: String,
    pub repo: String,
    pub branch: String,
    /// What the hooks agree on per minute: 16 hex digits of SHA-256 of the
    /// normalized line, so identical lines on every hook name the same schedule.
    pub id: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day-of-month or day-of-week field starts with `*` (Vixie cron's rule:
    /// when both are restricted, either may match; else both must).
    days_star: bool,
    weekdays_star: bool,
}

/// A UTC minute broken into the fields a schedule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    pub minute: u32,
    pub hour: u32,
    /// 1–31.
    pub day: u32,
    /// 1–12.
    pub month: u32,
    /// 0 (Sunday) – 6.
    pub weekday: u32,
}

impl Minute {
    /// The fields of `unix_minute` (seconds since the epoch / 60), UTC.
    pub fn of(unix_minute: u64) -> Minute {
        let days = unix_minute / 1440;
        let in_day = unix_minute % 1440;
        // Howard Hinnant's civil_from_days, for days since 1970-01-01 (a Thursday).
        let z = days as i64 + 719_468;
        let doe = z.rem_euclid(146_097); // day of the 400-year era
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Minute { minute: (in_day % 60) as u32, hour: (in_day / 60) as u32, day, month, weekday: ((days + 4) % 7) as u32 }
    }
}

impl Schedule {
    /// Whether this schedule fires at `m`.
    pub fn matches(&self, m: Minute) -> bool {
        let bit = |set: u64, v: u32| set & (1 << v) != 0;
        let day = bit(self.days, m.day);
        let weekday = bit(self.weekdays, m.weekday);
        let date = match (self.days_star, self.weekdays_star) {
            (false, false) => day || weekday,
            _ => day && weekday,
        };
        bit(self.minutes, m.minute) && bit(self.hours, m.hour) && bit(self.months, m.month) && date
    }
}

/// Where the schedules come from, for error messages: `HOOK_CRON` or
/// `HOOK_CRON_FILE="<path>"`.
fn origin(file: Option<&str>) -> String {
    file.map_or_else(|| "HOOK_CRON".to_string(), |f| format!("HOOK_CRON_FILE={f:?}"))
}

/// The schedules of HOOK_CRON (`inline`) or HOOK_CRON_FILE (`file`), at most
/// one of them set; none when neither is.
pub fn load(inline: Option<&str>, file: Option<&str>) -> Result<Vec<Schedule>, CronError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(CronError("HOOK_CRON and HOOK_CRON_FILE are both set: set one".into())),
        (Some(text), None) => parse(text, &origin(None)),
        (None, Some(path)) => {
            let from = origin(Some(path));
            let f = std::fs::File::open(path).map_err(|e| CronError(format!("{from}: cannot open it: {e}")))?;
            let mut bytes = Vec::new();
            f.take(MAX_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| CronError(format!("{from}: cannot read it: {e}")))?;
            if bytes.len() > MAX_BYTES {
                return Err(CronError(format!("{from}: longer than {MAX_BYTES} bytes")));
            }
            let text =
                String::from_utf8(bytes).map_err(|e| CronError(format!("{from}: not UTF-8 (byte {})", e.utf8_error().valid_up_to())))?;
            parse(&text, &from)
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// Parses schedule lines: blank lines and `#` comments skipped; `from` names
/// the source in errors.
pub fn parse(text: &str, from: &str) -> Result<Vec<Schedule>, CronError> {
    if text.len() > MAX_BYTES {
        return Err(CronError(format!("{from}: longer than {MAX_BYTES} bytes")));
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let at = |why: String| CronError(format!("{from} line {n}: {why}"));
        if line.len() > MAX_LINE {
            return Err(at(format!("longer than {MAX_LINE} bytes")));
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() == MAX_SCHEDULES {
            return Err(at(format!("more than {MAX_SCHEDULES} schedules")));
        }
        out.push(parse_line(line, n).map_err(at)?);
    }
    Ok(out)
}

/// The five fields: name, lowest and highest value.
const FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];

fn parse_line(line: &str, n: usize) -> Result<Schedule, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() != 7 {
        return Err(format!(
            "{} fields in {line:?}: expected 7, `<min> <hour> <day of month> <month> <day of week> <owner/name> <branch>`",
            words.len()
        ));
    }
    let mut sets = [0u64; 5];
    for (k, (name, lo, hi)) in FIELDS.iter().enumerate() {
        sets[k] = field(words[k], *lo, *hi).map_err(|why| format!("{name} {:?}: {why}", words[k]))?;
    }
    // day of week 7 is Sunday, as 0
    if sets[4] & (1 << 7) != 0 {
        sets[4] = (sets[4] | 1) & !(1 << 7);
    }
    let (repo, branch) = (words[5], words[6]);
    crate::payload::check_repo(repo).map_err(|e| e.0)?;
    crate::payload::check_branch(branch).map_err(|e| e.0)?;
    let when = words[..5].join(" ");
    let digest = Sha256::digest(format!("{when} {repo} {branch}").as_bytes());
    let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(Schedule {
        line: n,
        when,
        repo: repo.to_string(),
        branch: branch.to_string(),
        id,
        minutes: sets[0],
        hours: sets[1],
        days: sets[2],
        months: sets[3],
        weekdays: sets[4],
        days_star: words[2].starts_with('*'),
        weekdays_star: words[4].starts_with('*'),
    })
}

/// One field: a comma list of `*`, `a`, `a-b`, each but `a` optionally
/// `/step`; as a bit set of the values it allows.
fn field(text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let number = |s: &str| -> Result<u32, String> {
        if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{s:?} is not a number {lo}-{hi}"));
        }
        let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if v < lo || v > hi {
            return Err(format!("{v} is out of range {lo}-{hi}"));
        }
        Ok(v)
    };
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = match s.parse() {
                    Ok(v) if (1..=hi).contains(&v) && !s.starts_with('+') => v,
                    _ => return Err(format!("step {s:?} is not a number 1-{hi}")),
                };
                (r, Some(step))
            }
            None => (item, None),
        };
        let (from, to) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (number(a)?, number(b)?);
                    if a > b {
                        return Err(format!("range {r:?} runs backwards"));
                    }
                    (a, b)
                }
                None if step.is_some() => {
                    return Err(format!("{item:?}: a step needs `*` or a range before it, as `*/{}`", step.unwrap_or(1)))
                }
                None => {
                    let v = number(r)?;
                    (v, v)
                }
            },
        };
        let mut v = from;
        while v <= to {
            set |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Schedule {
        let mut all = parse(line, "HOOK_CRON").unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn err(text: &str) -> String {
        parse(text, "HOOK_CRON").expect_err(text).0
    }

    /// The minute of a UTC date and time, computed from days by hand-checked
    /// anchors rather than by `Minute::of`.
    fn at(unix_secs: u64) -> Minute {
        Minute::of(unix_secs / 60)
    }

    #[test]
    fn minutes_break_into_the_calendar_as_date_says() {
        // Oracle: GNU date(1) over times from 1970 to 2100, every 7919 minutes (a prime, so every
        // weekday, hour and minute comes round), plus leap days.
        let mut times: Vec<u64> = (0..8_634u64).map(|k| k * 7_919 * 60 + k % 60).collect();
        times.extend([951_782_400, 951_868_799, 1_078_012_800, 4_107_542_399, 1_709_164_800, 0, 59, 60, 86_399]);
        let args: Vec<String> = times.iter().map(|t| format!("@{t}")).collect();
        let mut input = args.join("\n");
        input.push('\n');
        let out = std::process::Command::new("date")
            .args(["-u", "-f", "-", "+%M %H %d %m %w"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().map(|mut s| s.write_all(input.as_bytes()));
                c.wait_with_output()
            });
        let Ok(out) = out else { return };
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), times.len(), "date printed {} lines for {} times", lines.len(), times.len());
        for (t, line) in times.iter().zip(lines) {
            let m = at(*t);
            let ours = format!("{:02} {:02} {:02} {:02} {}", m.minute, m.hour, m.day, m.month, m.weekday);
            assert_eq!(ours, line, "unix time {t}");
        }
    }

    // 2026-12-07 10:15 UTC is a Monday: 1796638500.
    const MON_1015: u64 = 1_796_638_500;

    #[test]
    fn the_anchor_is_a_monday_at_10_15() {
        assert_eq!(at(MON_1015), Minute { minute: 15, hour: 10, day: 7, month: 12, weekday: 1 });
    }

    /// Counts the minutes a schedule fires in a week from Monday 2026-12-07 00:00.
    fn fires_in_week(when: &str) -> Vec<u64> {
        let s = one(&format!("{when} acme/app main"));
        let start = (MON_1015 - 10 * 3600 - 15 * 60) / 60;
        (start..start + 7 * 1440).filter(|m| s.matches(Minute::of(*m))).map(|m| m - start).collect()
    }

    #[test]
    fn fields_lists_ranges_and_steps_fire_when_cron_does() {
        assert_eq!(fires_in_week("* * * * *").len(), 7 * 1440);
        assert_eq!(fires_in_week("*/15 * * * *").len(), 7 * 24 * 4);
        assert_eq!(fires_in_week("0 * * * *").len(), 7 * 24);
        assert_eq!(
            fires_in_week("10-50/10 3 * * *"),
            (0..7).flat_map(|d| [10, 20, 30, 40, 50].map(|m| d * 1440 + 180 + m)).collect::<Vec<_>>()
        );
        assert_eq!(fires_in_week("1,5 0 * * *").len(), 14);
        assert_eq!(fires_in_week("0 9-17 * * 1-5").len(), 5 * 9);
        // Monday 00:30 is minute 30 of the week; Sunday is its 7th day (offset 6 days)
        assert_eq!(fires_in_week("30 0 * * 1"), vec![30]);
        assert_eq!(fires_in_week("30 0 * * 0"), vec![6 * 1440 + 30]);
        assert_eq!(fires_in_week("30 0 * * 7"), vec![6 * 1440 + 30], "7 is Sunday too");
        // day of month 9 is the Wednesday
        assert_eq!(fires_in_week("0 12 9 * *"), vec![2 * 1440 + 720]);
        assert_eq!(fires_in_week("0 12 9 12 *"), vec![2 * 1440 + 720]);
        assert_eq!(fires_in_week("0 12 9 11 *"), Vec::<u64>::new(), "November: not this week");
    }

    #[test]
    fn both_days_restricted_means_either_matches() {
        // the 9th (Wednesday) or a Friday (the 11th)
        assert_eq!(fires_in_week("0 12 9 * 5"), vec![2 * 1440 + 720, 4 * 1440 + 720]);
        // `*/1` for day of week starts with `*`: unrestricted, so only the 9th
        assert_eq!(fires_in_week("0 12 9 * */1"), vec![2 * 1440 + 720]);
        // day of month `*`: only Fridays
        assert_eq!(fires_in_week("0 12 * * 5"), vec![4 * 1440 + 720]);
    }

    #[test]
    fn a_leap_day_fires_once_in_four_years() {
        let s = one("0 0 29 2 * acme/app main");
        let from = 1_704_067_200 / 60; // 2024-01-01
        let hits: Vec<Minute> = (0..4 * 366).map(|d| Minute::of(from + d * 1440)).filter(|m| s.matches(*m)).collect();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!((hits[0].day, hits[0].month), (29, 2));
    }

    #[test]
    fn lines_keep_their_number_repo_branch_and_a_stable_id() {
        let all = parse("# nightly\n\n0 3 * * * acme/app main\n  */5  *  * * *   acme/lib   release/1.x  \n", "HOOK_CRON").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].line, all[0].repo.as_str(), all[0].branch.as_str()), (3, "acme/app", "main"));
        assert_eq!((all[1].line, all[1].when.as_str(), all[1].branch.as_str()), (4, "*/5 * * * *", "release/1.x"));
        // the same schedule spelled with other spaces is the same schedule
        assert_eq!(all[1].id, one("*/5 * * * * acme/lib release/1.x").id);
        assert_ne!(all[0].id, all[1].id);
        assert_eq!(all[0].id.len(), 16);
    }

    #[test]
    fn bad_lines_say_where_and_what() {
        let cases = [
            ("0 3 * * acme/app main", "line 1: 6 fields"),
            ("60 3 * * * acme/app main", "line 1: minute \"60\": 60 is out of range 0-59"),
            ("0 24 * * * a/b main", "hour \"24\": 24 is out of range 0-23"),
            ("0 0 0 * * a/b main", "day of month \"0\": 0 is out of range 1-31"),
            ("0 0 * 13 * a/b main", "month \"13\": 13 is out of range 1-12"),
            ("0 0 * * 8 a/b main", "day of week \"8\": 8 is out of range 0-7"),
            ("5-1 * * * * a/b main", "range \"5-1\" runs backwards"),
            ("*/0 * * * * a/b main", "step \"0\" is not a number 1-59"),
            ("5/10 * * * * a/b main", "a step needs `*` or a range"),
            ("mon * * * * a/b main", "\"mon\" is not a number 0-59"),
            ("1,,2 * * * * a/b main", "\"\" is not a number"),
            ("-1 * * * * a/b main", "is not a number"),
            ("* * * * * ../x main", "repository name \"../x\""),
            ("* * * * * a/b -x", "branch name \"-x\""),
            ("# ok\n* * * * * a/b main\n* * * * a/b main", "HOOK_CRON line 3: 6 fields"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "{text:?}: {got:?} lacks {want:?}");
            assert!(got.starts_with("HOOK_CRON line "), "{got}");
        }
    }

    #[test]
    fn bounds_on_lines_bytes_and_schedules() {
        let long = format!("* * * * * a/b {}", "x".repeat(MAX_LINE));
        assert!(err(&long).contains(&format!("line 1: longer than {MAX_LINE} bytes")));
        let many = "* * * * * a/b main\n".repeat(MAX_SCHEDULES + 1);
        assert!(err(&many).contains(&format!("line {}: more than {MAX_SCHEDULES} schedules", MAX_SCHEDULES + 1)));
        assert_eq!(parse(&"* * * * * a/b main\n".repeat(MAX_SCHEDULES), "HOOK_CRON").unwrap().len(), MAX_SCHEDULES);
        let huge = "#\n".repeat(MAX_BYTES / 2 + 1);
        assert!(err(&huge).contains("longer than"));
    }

    #[test]
    fn the_schedules_page_shows_what_the_parser_does() {
        let page = include_str!("../docs/schedules.md");
        let example = page.split("```\n").nth(1).expect("docs/schedules.md's first code block");
        let all = parse(example, "HOOK_CRON").unwrap();
        let names: Vec<(&str, &str, &str)> = all.iter().map(|s| (s.when.as_str(), s.repo.as_str(), s.branch.as_str())).collect();
        assert_eq!(
            names,
            [("0 3 * * *", "acme/app", "main"), ("*/15 8-18 * * 1-5", "acme/app", "release/1.x"), ("0 6 1,15 * *", "acme/lib", "main")]
        );
        // the quarter-hour line: 44 times a weekday (08:00 to 18:45), none at the weekend
        assert_eq!(fires_in_week("*/15 8-18 * * 1-5").len(), 5 * 11 * 4);
        let shown = page.lines().find(|l| l.starts_with("hook: HOOK_CRON line ")).expect("the refusal the page shows");
        assert_eq!(shown, format!("hook: {}", err("0 3 * * * acme/app main\n61 * * * * acme/app main")));
    }

    #[test]
    fn both_settings_at_once_are_refused() {
        assert!(load(Some("* * * * * a/b main"), Some("/dev/null")).unwrap_err().0.contains("both set"));
        assert_eq!(load(None, None).unwrap(), vec![]);
        assert!(load(None, Some("/nonexistent/cron")).unwrap_err().0.starts_with("HOOK_CRON_FILE=\"/nonexistent/cron\": cannot open it"));
    }
}

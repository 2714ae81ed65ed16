//! Version names as Syncthing writes and reads them: `name~TAG.ext`, the
//! tag being the archive time `YYYYMMDD-HHMMSS` in local time, put
//! before the extension (the part from the last dot of the last path
//! component: `a.tar.gz` → `a.tar~TAG.gz`, `.bashrc` → `~TAG.bashrc`,
//! `Makefile` → `Makefile~TAG`).
//!
//! Local time is what Syncthing uses, so versions written by either
//! program list the same in both; the conversions go through the C
//! library (`localtime_r`, `mktime`), which honours `TZ` as Go does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of a tag (`YYYYMMDD-HHMMSS`).
pub const TAG_LEN: usize = 15;

/// The extension of the last component of `path` (from its last dot,
/// dot included; `""` when it has none), as Go's `filepath.Ext`.
pub fn ext(path: &str) -> &str {
    let base_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[base_start..].rfind('.') {
        Some(i) => &path[base_start + i..],
        None => "",
    }
}

/// `name` (a base name or a relative path) with `tag` before its
/// extension.
pub fn tag_filename(name: &str, tag: &str) -> String {
    let e = ext(name);
    let stem = &name[..name.len() - e.len()];
    format!("{stem}~{tag}{e}")
}

/// The tag of a version's path: the text after the last `~` that is
/// followed by a tag and at most one extension (`[^~.]+` then an
/// optional `.[^.]+` up to the end), as Syncthing's pattern reads it;
/// `None` when there is none.
pub fn extract_tag(path: &str) -> Option<&str> {
    for (i, _) in path.match_indices('~').rev() {
        let rest = &path[i + 1..];
        let head_len = rest.find(['~', '.']).unwrap_or(rest.len());
        if head_len == 0 {
            continue;
        }
        let after = &rest[head_len..];
        let ok = after.is_empty()
            || (after.starts_with('.') && after.len() > 1 && !after[1..].contains('.'));
        if ok {
            return Some(&rest[..head_len]);
        }
    }
    None
}

/// The original path of a version and its tag (Syncthing's
/// `UntagFilename`); `None` for a path without a tag (a trash can entry).
pub fn untag_filename(path: &str) -> Option<(String, &str)> {
    let tag = extract_tag(path)?;
    let e = ext(path);
    if e.ends_with(tag) {
        // No extension after the tag: `name~TAG`.
        return Some((path.strip_suffix(tag)?.strip_suffix('~')?.to_string(), tag));
    }
    let cut = path.len().checked_sub(e.len() + tag.len() + 1)?;
    let without = path.get(..cut)?;
    Some((format!("{without}{e}"), tag))
}

/// When `name` (a base name) is a version of `original` in the strict
/// form the archiver writes (`original` tagged with 15 digits and a dash),
/// its tag.
pub fn version_tag_of<'a>(name: &'a str, original: &str) -> Option<&'a str> {
    let e = ext(original);
    let stem = &original[..original.len() - e.len()];
    let tag = name
        .strip_prefix(stem)?
        .strip_prefix('~')?
        .strip_suffix(e)?;
    is_tag_shape(tag).then_some(tag)
}

/// `DDDDDDDD-DDDDDD`.
fn is_tag_shape(tag: &str) -> bool {
    let b = tag.as_bytes();
    b.len() == TAG_LEN
        && b.iter().enumerate().all(|(i, c)| {
            if i == 8 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// The broken-down local time of `secs`.
fn local_tm(secs: i64) -> Option<libc::tm> {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r writes into the zeroed struct we own and reads
    // only `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    ok.then_some(tm)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// The tag of time `t` (local time, whole seconds).
pub fn format_tag(t: SystemTime) -> String {
    match local_tm(unix_secs(t)) {
        Some(tm) => format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        ),
        None => "00000000-000000".into(),
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// The time a tag stands for (read as local time); `None` unless it is a
/// valid `YYYYMMDD-HHMMSS` (Go's layout `20060102-150405`: exact digits,
/// real dates).
pub fn parse_tag(tag: &str) -> Option<SystemTime> {
    if !is_tag_shape(tag) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| tag[r].parse::<u32>().ok();
    let (year, month, day) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hour, min, sec) = (n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year.into(), month)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return None;
    }
    // SAFETY: mktime reads and normalizes the struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = year as i32 - 1900;
    tm.tm_mon = month as i32 - 1;
    tm.tm_mday = day as i32;
    tm.tm_hour = hour as i32;
    tm.tm_min = min as i32;
    tm.tm_sec = sec as i32;
    tm.tm_isdst = -1;
    let secs = unsafe { libc::mktime(&mut tm) };
    Some(from_secs(secs as i64))
}

pub fn from_secs(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// RFC 3339 in local time with its offset (`Z` at offset 0), whole
/// seconds: how Go prints a `time.Time` in `time.Local` (the REST
/// answer's `versionTime` and `modTime`).
pub fn rfc3339_local(t: SystemTime) -> String {
    let Some(tm) = local_tm(unix_secs(t)) else {
        return crate::timefmt::time_fmt(unix_secs(t));
    };
    let off = tm.tm_gmtoff;
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        let a = off.unsigned_abs();
        format!(
            "{}{:02}:{:02}",
            if off < 0 { '-' } else { '+' },
            a / 3600,
            a % 3600 / 60
        )
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{zone}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Parses RFC 3339 (any offset, optional fraction) as sent back by a
/// tool restoring a version (Go's `time.Time` JSON); whole seconds.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh: i64 = o[1..3].parse().ok()?;
            let om: i64 = o[4..6].parse().ok()?;
            let v = oh * 3600 + om * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo)
        || d < 1
        || d > days_in_month(y, mo as u32).into()
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(from_secs(days * 86400 + h * 3600 + mi * 60 + se - offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_go_before_the_extension() {
        assert_eq!(tag_filename("shot.exr", "T"), "shot~T.exr");
        assert_eq!(tag_filename("a/b/shot.exr", "T"), "a/b/shot~T.exr");
        assert_eq!(tag_filename("Makefile", "T"), "Makefile~T");
        assert_eq!(tag_filename("scene.tar.gz", "T"), "scene.tar~T.gz");
        // A dotfile's whole name is its extension, as Go's filepath.Ext says.
        assert_eq!(tag_filename(".bashrc", "T"), "~T.bashrc");
        assert_eq!(tag_filename("d.v/noext", "T"), "d.v/noext~T");
        assert_eq!(tag_filename("x~1.b", "T"), "x~1~T.b");
    }

    #[test]
    fn tags_are_found_and_removed_as_syncthing_reads_them() {
        let t = "20240102-030405";
        for name in [
            "shot.exr",
            "a/b/shot.exr",
            "Makefile",
            "scene.tar.gz",
            ".bashrc",
            "x~1.b",
            "~$lock.docx",
        ] {
            let v = tag_filename(name, t);
            assert_eq!(extract_tag(&v), Some(t), "{v}");
            assert_eq!(untag_filename(&v), Some((name.to_string(), t)), "{v}");
            let base = v.rsplit('/').next().unwrap();
            let orig = name.rsplit('/').next().unwrap();
            assert_eq!(version_tag_of(base, orig), Some(t), "{v}");
        }
        // A name with no tag is a trash can entry.
        assert_eq!(untag_filename("plain.txt"), None);
        assert_eq!(untag_filename("two.dots.txt"), None);
        // The tag of `name.ext~TAG` (a form other tools write) is read too.
        assert_eq!(
            untag_filename("report.pdf~20240102-030405"),
            Some(("report.pdf".into(), t))
        );
        // Not a version of that file: another stem, or a non-tag.
        assert_eq!(
            version_tag_of("shot~20240102-030405.exr", "shots.exr"),
            None
        );
        assert_eq!(version_tag_of("shot~2024.exr", "shot.exr"), None);
        assert_eq!(
            version_tag_of("shot~20240102-030405.exr.x", "shot.exr"),
            None
        );
    }

    #[test]
    fn tags_are_local_time_and_round_trip() {
        let t = parse_tag("20240229-235959").unwrap();
        assert_eq!(format_tag(t), "20240229-235959");
        for bad in [
            "20230229-000000",
            "20241301-000000",
            "20240101-240000",
            "2024010-1000000",
            "20240101_000000",
            "2024010a-000000",
        ] {
            assert!(parse_tag(bad).is_none(), "{bad}");
        }
        // RFC 3339 in local time reads back to the same instant.
        let shown = rfc3339_local(t);
        assert_eq!(parse_rfc3339(&shown), Some(t), "{shown}");
        assert_eq!(
            parse_rfc3339("1970-01-02T01:00:00+01:00"),
            Some(from_secs(86400))
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10.5Z"), Some(from_secs(10)));
        assert!(parse_rfc3339("yesterday").is_none());
    }
}

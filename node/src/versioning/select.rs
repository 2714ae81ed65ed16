//! Which versions of one file a cleanup removes: pure functions of the
//! version names and `now`, which the caller passes in (tests use a
//! fixed clock; nothing here reads one).
//!
//! Both follow Syncthing 2.1.3: names are sorted (tags sort in time
//! order), a name whose tag does not parse is never removed for its age.

use std::time::SystemTime;

use super::tag;

/// Staggered buckets: (distance kept between versions, up to this age),
/// in seconds; the last one ends at `maxAge`.
const BUCKETS: [(i64, i64); 3] = [
    (30, 60 * 60),               // the first hour: one per 30 s
    (60 * 60, 24 * 60 * 60),     // the first day: one per hour
    (24 * 60 * 60, 30 * 86_400), // the first 30 days: one per day
];
/// Beyond 30 days: one per week, until `maxAge`.
const WEEK: i64 = 7 * 86_400;

/// Age of the version named `name` at `now` in whole seconds (negative
/// for a tag in the future), `None` when its tag does not parse.
fn age(name: &str, now: SystemTime) -> Option<i64> {
    let t = tag::parse_tag(tag::extract_tag(name)?)?;
    Some(match now.duration_since(t) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// Simple versioning: all but the `keep` newest, then of those kept the
/// ones older than `cleanout` (if set).
pub fn simple(
    versions: &[String],
    keep: usize,
    cleanout: Option<std::time::Duration>,
    now: SystemTime,
) -> Vec<String> {
    let mut sorted: Vec<&String> = versions.iter().collect();
    sorted.sort();
    let excess = sorted.len().saturating_sub(keep);
    let mut remove: Vec<String> = sorted[..excess].iter().map(|s| s.to_string()).collect();
    if let Some(max) = cleanout {
        let max = max.as_secs() as i64;
        for v in &sorted[excess..] {
            if age(v, now).is_some_and(|a| a > max) {
                remove.push(v.to_string());
            }
        }
    }
    remove
}

/// Staggered versioning. Going from the oldest version to the newest,
/// a version is kept when it is at least one bucket step younger than the
/// last version kept, the step being that of the bucket its own age falls
/// in; so the *oldest* version of each bucket survives. Ages are counted
/// from `now` (not from the newest version); anything older than
/// `max_age_s` goes (0: no limit).
pub fn staggered(versions: &[String], max_age_s: u64, now: SystemTime) -> Vec<String> {
    let max_age = max_age_s.min(i64::MAX as u64) as i64;
    let mut sorted: Vec<&String> = versions.iter().collect();
    sorted.sort();
    let mut remove = Vec::new();
    let mut last_kept: Option<i64> = None;
    for v in sorted {
        let Some(a) = age(v, now) else { continue };
        if max_age > 0 && a > max_age {
            remove.push(v.clone());
            continue;
        }
        let Some(prev) = last_kept else {
            last_kept = Some(a);
            continue;
        };
        let step = BUCKETS
            .iter()
            .find(|(_, end)| a < *end)
            .map_or(WEEK, |(step, _)| *step);
        if prev - a < step {
            remove.push(v.clone());
        } else {
            last_kept = Some(a);
        }
    }
    remove
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(tag: &str) -> SystemTime {
        tag::parse_tag(tag).unwrap()
    }

    /// `f~TAG.exr` for `secs` before `now`.
    fn before(now: SystemTime, secs: u64) -> String {
        tag::tag_filename("f.exr", &tag::format_tag(now - Duration::from_secs(secs)))
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn simple_keeps_the_newest_and_drops_the_expired() {
        let now = at("20250610-120000");
        let v: Vec<String> = [10, 20, 30, 40_000, 500_000]
            .iter()
            .map(|s| before(now, *s))
            .collect();
        // Keep 3: the two oldest go.
        assert_eq!(
            sorted(simple(&v, 3, None, now)),
            sorted(vec![v[3].clone(), v[4].clone()])
        );
        assert!(simple(&v, 10, None, now).is_empty());
        // Keep 10 but only 1 day: the one of 500 000 s ago goes.
        assert_eq!(
            simple(&v, 10, Some(Duration::from_secs(86_400)), now),
            vec![v[4].clone()]
        );
        // Unparsable tags count towards keep but never expire.
        let odd = vec!["f~20251399-000000.exr".to_string(), v[0].clone()];
        assert_eq!(
            simple(&odd, 5, Some(Duration::from_secs(1)), now),
            vec![v[0].clone()]
        );
    }

    #[test]
    fn staggered_keeps_the_oldest_of_each_bucket_counted_from_now() {
        let now = at("20250610-120000");
        let d = 86_400;
        let v = |s: &[u64]| -> Vec<String> { s.iter().map(|x| before(now, *x)).collect() };
        // First hour, 30 s buckets: 100 and 80 s ago are within 30 s of
        // each other (80 goes); 40 s ago is 60 s after the 100 s one (kept);
        // 20 s ago is 20 s after the 40 s one (goes).
        let first_hour = v(&[100, 80, 40, 20]);
        assert_eq!(
            sorted(staggered(&first_hour, 365 * d, now)),
            sorted(vec![first_hour[1].clone(), first_hour[3].clone()])
        );
        // First day, 1 h buckets: 5 h and 4.5 h ago: the younger goes.
        let day = v(&[5 * 3600, 4 * 3600 + 1800, 3 * 3600]);
        assert_eq!(staggered(&day, 365 * d, now), vec![day[1].clone()]);
        // 30 days, 1 day buckets; beyond, 1 week buckets.
        let month = v(&[10 * d, 9 * d + 3600, 8 * d]);
        assert_eq!(staggered(&month, 365 * d, now), vec![month[1].clone()]);
        let year = v(&[100 * d, 96 * d, 93 * d]);
        assert_eq!(staggered(&year, 365 * d, now), vec![year[1].clone()]);
        // Over maxAge: gone whatever else; maxAge 0: no age limit.
        let old = v(&[400 * d, 10]);
        assert_eq!(staggered(&old, 365 * d, now), vec![old[0].clone()]);
        assert!(staggered(&old, 0, now).is_empty());
        // The anchor is now, not the newest version: the same versions a
        // year later fall into week buckets (and one of them goes).
        let later = now + Duration::from_secs(60 * d);
        assert_eq!(staggered(&first_hour, 365 * d, later).len(), 3);
    }
}

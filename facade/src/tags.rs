//! Tags: following a registry's pagination, and ordering tags newest-likely-first.
//!
//! Registries paginate `GET /v2/<name>/tags/list` with a `Link: <url>; rel="next"` header.
//! The URL is followed verbatim (resolved against the registry's base when relative): Quay
//! and ECR put opaque cursors in it, so nothing may be rebuilt from `last=`.
//!
//! Nothing the registry sends is trusted ([`Walk`]): a tag that breaks the distribution spec's
//! grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` is dropped and counted; the walk stops, and
//! says it was clipped and why, at the caller's limit, at a `Link` to a page already fetched,
//! at [`MAX_PAGE_BYTES`] for one page, [`MAX_TOTAL_BYTES`] over all pages, or [`MAX_PAGES`].
//!
//! Registries return no dates with tags, so the order is a heuristic, documented here and in
//! `meshctl tags --help`:
//!
//! 1. semantic-version-like tags (`v1.2.3`, `1.25`, `3`, `1.0.0-rc.1`, `1.25-alpine`),
//!    highest version first; a release before its pre-releases and suffixed variants;
//! 2. date-like tags (`20240115`, `2024-01-15`, `2024.01.15`, with any suffix), newest
//!    first;
//! 3. moving names (`latest`, `stable`, `main`, `master`, `edge`, `nightly`, ...);
//! 4. everything else, in lexical order.

use std::cmp::Ordering;
use std::collections::HashSet;

use meshanics_operator_api::{ClipReason, TagList};
use meshanics_shared::Tag;
use reqwest::Url;

use crate::registry_client::same_origin;

/// Tags asked for per page (registries may ignore it).
pub(crate) const PAGE_SIZE: usize = 1000;
/// The most bytes one page may have: 4 MiB. The 1,000 tags asked for take at most 131 KiB
/// (128-byte tags, quoted); 4 MiB still takes a registry that ignores `n` and sends some
/// 30,000 maximal tags (or 200,000 typical ones) in one page, or a GCR page with its
/// `manifest` map, while one page's buffer stays small.
pub(crate) const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// The most bytes read over all pages of one listing: 32 MiB, some 250,000 maximal tags. The
/// list goes to `meshctl` as one JSON answer, which the operator client caps at 64 MiB.
pub(crate) const MAX_TOTAL_BYTES: usize = 32 * 1024 * 1024;
/// The most pages one listing follows, whatever the limit: 100,000 tags at Quay's 100 per
/// page, while a registry handing out a fresh cursor for every empty page costs at most this
/// many requests.
pub(crate) const MAX_PAGES: usize = 1_000;

/// Tag names that move with every release.
const MOVING: [&str; 12] = [
    "latest", "stable", "main", "master", "edge", "nightly", "dev", "develop", "current", "lts",
    "mainline", "release",
];

/// The target of the `rel="next"` link among `Link` header values, verbatim.
pub fn next_link<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    for value in values {
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let after = rest.get(open + 1..)?;
            let close = after.find('>')?;
            let target = after.get(..close)?;
            let params_and_more = after.get(close + 1..)?;
            // The parameters of this link run until the next link's '<' (or the end).
            let params_end = params_and_more.find('<').unwrap_or(params_and_more.len());
            let params = params_and_more.get(..params_end)?;
            let is_next = params.split(';').any(|p| {
                let Some((key, value)) = p.split_once('=') else {
                    return false;
                };
                key.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches(|c| c == '"' || c == ',')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.to_owned());
            }
            rest = params_and_more.get(params_end..)?;
        }
    }
    None
}

/// Why a `Link` target cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The target does not resolve to a URL against the registry's base.
    #[error("the next-page Link is not a URL")]
    NotAUrl,
    /// The target is on another scheme, host or port: the registry's credentials must not
    /// follow it.
    #[error("the registry's next page leaves its origin")]
    LeavesOrigin,
}

/// Resolves a link target against the registry's API base URL (`https://host:port/v2/`):
/// relative targets are joined as a browser would, absolute ones kept; either way the result
/// must share the base's origin (scheme, host and port).
pub fn resolve_link(base: &Url, target: &str) -> Result<Url, LinkError> {
    let url = base.join(target).map_err(|_| LinkError::NotAUrl)?;
    if !same_origin(&url, base) {
        return Err(LinkError::LeavesOrigin);
    }
    Ok(url)
}

/// One listing's walk over a registry's pages: the URLs fetched, the bytes read, the tags
/// kept, and why it stopped early.
#[derive(Debug)]
pub(crate) struct Walk {
    limit: usize,
    fetched: HashSet<Url>,
    bytes_read: usize,
    tags: Vec<String>,
    dropped: usize,
    clipped: Option<ClipReason>,
}

impl Walk {
    /// A walk that keeps at most `limit` tags.
    pub(crate) fn new(limit: usize) -> Self {
        Walk {
            limit,
            fetched: HashSet::new(),
            bytes_read: 0,
            tags: Vec::new(),
            dropped: 0,
            clipped: None,
        }
    }

    /// Whether `url` may be fetched next, recording it: not once the walk was clipped, not
    /// past a cap, and never a URL fetched before (a `Link` loop).
    pub(crate) fn visit(&mut self, url: &Url) -> bool {
        if self.clipped.is_some() {
            return false;
        }
        let reason = if self.fetched.contains(url) {
            ClipReason::LinkLoop
        } else if self.fetched.len() >= MAX_PAGES {
            ClipReason::Pages
        } else if self.bytes_read >= MAX_TOTAL_BYTES {
            ClipReason::TotalBytes
        } else {
            self.fetched.insert(url.clone());
            return true;
        };
        self.clipped = Some(reason);
        false
    }

    /// The most bytes the next page may have: the page cap, or what is left of the total.
    pub(crate) fn page_budget(&self) -> usize {
        MAX_PAGE_BYTES.min(MAX_TOTAL_BYTES.saturating_sub(self.bytes_read))
    }

    /// The page fetched last was larger than [`Walk::page_budget`]: the walk stops without it.
    pub(crate) fn page_too_large(&mut self) {
        self.clipped = Some(if self.page_budget() < MAX_PAGE_BYTES {
            ClipReason::TotalBytes
        } else {
            ClipReason::PageBytes
        });
    }

    /// Takes a page of `bytes` bytes and its tags, of which only valid ones count; `more`:
    /// whether the registry links a next page. Returns whether to follow it.
    pub(crate) fn page(&mut self, bytes: usize, tags: Vec<String>, more: bool) -> bool {
        self.bytes_read = self.bytes_read.saturating_add(bytes);
        for tag in tags {
            if Tag::parse(&tag).is_err() {
                self.dropped += 1;
                continue;
            }
            if self.tags.len() == self.limit {
                self.clipped = Some(ClipReason::Limit);
                return false;
            }
            self.tags.push(tag);
        }
        if more && self.tags.len() == self.limit {
            // The registry has more pages: the list is not complete.
            self.clipped = Some(ClipReason::Limit);
            return false;
        }
        more
    }

    /// How many tags broke the tag grammar so far.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }

    /// The list of `repository`, ordered newest-likely-first.
    pub(crate) fn finish(self, repository: String) -> TagList {
        TagList {
            repository,
            seen: self.tags.len(),
            tags: order(self.tags),
            clipped: self.clipped.is_some(),
            clip_reason: self.clipped,
            dropped: self.dropped,
        }
    }
}

/// Orders tags newest-likely-first (see the module documentation).
pub fn order(mut tags: Vec<String>) -> Vec<String> {
    tags.sort_by(|a, b| compare(a, b));
    tags.dedup();
    tags
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Version,
    Date,
    Moving,
    Other,
}

/// A version: numeric parts, then whether it has a suffix (pre-release or variant).
#[derive(Debug, PartialEq, Eq)]
struct Version<'a> {
    numbers: Vec<u64>,
    suffix: Option<&'a str>,
}

fn classify(tag: &str) -> Class {
    if date_key(tag).is_some() {
        Class::Date
    } else if version(tag).is_some() {
        Class::Version
    } else if MOVING.contains(&tag.to_ascii_lowercase().as_str()) {
        Class::Moving
    } else {
        Class::Other
    }
}

fn compare(a: &str, b: &str) -> Ordering {
    let (ca, cb) = (classify(a), classify(b));
    if ca != cb {
        return ca.cmp(&cb);
    }
    match ca {
        Class::Version => match (version(a), version(b)) {
            (Some(va), Some(vb)) => compare_versions(&vb, &va).then_with(|| a.cmp(b)),
            _ => a.cmp(b),
        },
        Class::Date => date_key(b).cmp(&date_key(a)).then_with(|| a.cmp(b)),
        Class::Moving => {
            let rank = |t: &str| MOVING.iter().position(|m| t.eq_ignore_ascii_case(m));
            rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
        }
        Class::Other => a.cmp(b),
    }
}

/// Ascending version order: numbers part by part (a missing part is 0), then a plain release
/// above the same numbers with a suffix.
fn compare_versions(a: &Version<'_>, b: &Version<'_>) -> Ordering {
    let len = a.numbers.len().max(b.numbers.len());
    for i in 0..len {
        let x = a.numbers.get(i).copied().unwrap_or(0);
        let y = b.numbers.get(i).copied().unwrap_or(0);
        if x != y {
            return x.cmp(&y);
        }
    }
    match (a.suffix, b.suffix) {
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
        (None, None) => a.numbers.len().cmp(&b.numbers.len()),
    }
}

/// `[v]N[.N[.N[.N]]][-suffix|+build]`.
fn version(tag: &str) -> Option<Version<'_>> {
    let body = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    let end = body.find(['-', '+', '_']).unwrap_or(body.len());
    let (core, rest) = body.split_at(end);
    let numbers: Vec<u64> = core
        .split('.')
        .map(|p| {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse().ok()
            }
        })
        .collect::<Option<_>>()?;
    if numbers.is_empty() || numbers.len() > 4 {
        return None;
    }
    let suffix = rest.get(1..).filter(|s| !s.is_empty());
    if !rest.is_empty() && suffix.is_none() {
        return None;
    }
    Some(Version { numbers, suffix })
}

/// `YYYYMMDD`, `YYYY-MM-DD` or `YYYY.MM.DD` at the start, with a plausible date, as a
/// sortable key (the date, then the rest of the tag).
fn date_key(tag: &str) -> Option<(u32, &str)> {
    let bytes = tag.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = tag.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day, rest) = match bytes.get(4) {
        Some(b'-' | b'.') if bytes.get(7) == bytes.get(4) => {
            (digits(0..4)?, digits(5..7)?, digits(8..10)?, tag.get(10..)?)
        }
        _ => (digits(0..4)?, digits(4..6)?, digits(6..8)?, tag.get(8..)?),
    };
    if !(1990..=2100).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // `20240115` followed by more digits is a build number, not a date.
    if rest.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((year * 10_000 + month * 100 + day, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_link_among_several() {
        assert_eq!(
            next_link(["</v2/app/tags/list?last=b&n=2>; rel=\"next\""]),
            Some("/v2/app/tags/list?last=b&n=2".into())
        );
        assert_eq!(
            next_link([
                r#"<https://r.example/v2/x/tags/list?page=1>; rel="prev", <https://r.example/v2/x/tags/list?next_page=opaque%3D%3D>; rel="next""#
            ]),
            Some("https://r.example/v2/x/tags/list?next_page=opaque%3D%3D".into())
        );
        assert_eq!(
            next_link(["<a>; rel=prev", "<b>; REL=next"]),
            Some("b".into())
        );
        assert_eq!(next_link(["<a>; rel=\"prev\""]), None);
        assert_eq!(next_link(["garbage", "<unterminated"]), None);
        assert_eq!(next_link(std::iter::empty()), None);
    }

    #[test]
    fn resolves_relative_links_against_the_registry() {
        let base = Url::parse("https://r.example:5000/v2/").unwrap();
        assert_eq!(
            resolve_link(&base, "/v2/a/tags/list?last=x")
                .unwrap()
                .as_str(),
            "https://r.example:5000/v2/a/tags/list?last=x"
        );
        assert_eq!(
            resolve_link(&base, "a/tags/list?n=2").unwrap().as_str(),
            "https://r.example:5000/v2/a/tags/list?n=2"
        );
        assert_eq!(
            resolve_link(&base, "https://r.example:5000/v2/a/tags/list?c=opaque")
                .unwrap()
                .as_str(),
            "https://r.example:5000/v2/a/tags/list?c=opaque"
        );
    }

    #[test]
    fn refuses_links_that_leave_the_registry_origin() {
        let base = Url::parse("https://r.example/v2/").unwrap();
        for target in [
            "https://other.example/v2/a/tags/list",
            "http://r.example/v2/a/tags/list",
            "https://r.example:8443/v2/a/tags/list",
            "//other.example/v2/a/tags/list",
        ] {
            assert_eq!(
                resolve_link(&base, target),
                Err(LinkError::LeavesOrigin),
                "{target}"
            );
        }
        assert_eq!(resolve_link(&base, "http://[::1"), Err(LinkError::NotAUrl));
    }

    fn url(query: &str) -> Url {
        Url::parse(&format!("http://r.example/v2/a/tags/list?{query}")).unwrap()
    }

    fn strings(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_walk_drops_and_counts_tags_that_break_the_tag_grammar() {
        let mut walk = Walk::new(100);
        let long = "a".repeat(129);
        let longest = "a".repeat(128);
        let page = strings(&[
            "1.0",
            "evil\u{1b}[2J",
            "../x",
            "",
            "-x",
            ".x",
            "a/b",
            "a:b",
            "é",
            &long,
            &longest,
            "_x",
            "A.b-C_9",
        ]);
        assert!(!walk.page(10, page, false));
        assert_eq!(walk.dropped(), 9);
        let list = walk.finish("r.example/a".into());
        assert_eq!(list.seen, 4);
        assert_eq!(list.dropped, 9);
        assert!(list.tags.iter().all(|t| Tag::parse(t).is_ok()));
        assert!(!list.clipped);
    }

    #[test]
    fn a_walk_stops_at_a_url_it_fetched_before() {
        let mut walk = Walk::new(100);
        assert!(walk.visit(&url("n=2")));
        assert!(walk.page(10, strings(&["a"]), true));
        assert!(walk.visit(&url("c=1")));
        assert!(walk.page(10, strings(&["b"]), true));
        assert!(!walk.visit(&url("n=2")));
        let list = walk.finish("r.example/a".into());
        assert_eq!(list.clip_reason, Some(ClipReason::LinkLoop));
        assert!(list.clipped);
        assert_eq!(list.tags, ["a", "b"]);
    }

    #[test]
    fn a_walk_stops_at_the_byte_caps() {
        let mut walk = Walk::new(100);
        assert_eq!(walk.page_budget(), MAX_PAGE_BYTES);
        walk.page_too_large();
        assert_eq!(
            walk.finish(String::new()).clip_reason,
            Some(ClipReason::PageBytes)
        );

        let mut walk = Walk::new(100);
        let mut pages = 0;
        while walk.visit(&url(&format!("c={pages}"))) {
            pages += 1;
            let budget = walk.page_budget();
            if budget < 3_000_000 {
                walk.page_too_large();
                continue;
            }
            walk.page(3_000_000, Vec::new(), true);
        }
        assert_eq!(pages, MAX_TOTAL_BYTES / 3_000_000 + 1);
        assert_eq!(
            walk.finish(String::new()).clip_reason,
            Some(ClipReason::TotalBytes)
        );
    }

    #[test]
    fn a_walk_stops_at_the_page_cap_and_at_the_limit() {
        let mut walk = Walk::new(100);
        for i in 0..MAX_PAGES {
            assert!(walk.visit(&url(&format!("c={i}"))));
            assert!(walk.page(11, Vec::new(), true));
        }
        assert!(!walk.visit(&url("c=last")));
        assert_eq!(
            walk.finish(String::new()).clip_reason,
            Some(ClipReason::Pages)
        );

        let mut walk = Walk::new(2);
        assert!(!walk.page(10, strings(&["a", "b", "c"]), false));
        let list = walk.finish(String::new());
        assert_eq!((list.seen, list.clip_reason), (2, Some(ClipReason::Limit)));
        // A limit that ends where a page ends, with a next page: clipped too.
        let mut walk = Walk::new(2);
        assert!(!walk.page(10, strings(&["a", "b"]), true));
        assert_eq!(
            walk.finish(String::new()).clip_reason,
            Some(ClipReason::Limit)
        );
        let mut walk = Walk::new(2);
        assert!(!walk.page(10, strings(&["a", "b"]), false));
        assert_eq!(walk.finish(String::new()).clip_reason, None);
    }

    #[test]
    fn orders_versions_then_dates_then_moving_names_then_the_rest() {
        let tags = [
            "latest",
            "1.2.3",
            "v1.10.0",
            "1.2",
            "20240101",
            "2024-03-05",
            "feature-x",
            "1.10.0-rc.1",
            "stable",
            "0.9",
            "abc",
            "2",
            "1.25-alpine",
            "1.25",
            "20231231-abc",
            "sha-1234",
        ];
        let ordered = order(tags.iter().map(|t| t.to_string()).collect());
        assert_eq!(
            ordered,
            [
                "2",
                "1.25",
                "1.25-alpine",
                "v1.10.0",
                "1.10.0-rc.1",
                "1.2.3",
                "1.2",
                "0.9",
                "2024-03-05",
                "20240101",
                "20231231-abc",
                "latest",
                "stable",
                "abc",
                "feature-x",
                "sha-1234",
            ]
        );
    }

    #[test]
    fn does_not_take_build_numbers_or_impossible_dates_for_dates() {
        assert_eq!(date_key("2024011512"), None);
        assert_eq!(date_key("20241345"), None);
        assert!(date_key("2024.01.15-r1").is_some());
        assert_eq!(classify("2024011512"), Class::Other);
    }
}

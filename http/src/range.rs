//! The single-range `Range: bytes=` parser (RFC 9110 §14.1.2), for servers that answer
//! ranges of content they hold whole, and the `Content-Range` parser (§14.4), for proxies
//! that check a `206` is the range they asked for.

use http::HeaderValue;

/// The one `bytes=` range `value` names, as `[start, end)` within `len` bytes.
///
/// `bytes=A-B`, `bytes=A-` and the suffix form `bytes=-N` (the last `N` bytes) are
/// understood; an end past `len` is cut to `len`. `None` when the range is not satisfiable
/// (it starts at or past `len`, or is empty) or not understood (another unit, several
/// ranges, not numbers): the caller answers 416, or the whole content where HTTP allows.
pub fn parse(value: &HeaderValue, len: u64) -> Option<(u64, u64)> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        (len.saturating_sub(suffix), len)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            len
        } else {
            last.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (start, end)
    };
    (start < end && start < len).then_some((start, end))
}

/// The slice a single-part `206`'s `Content-Range: bytes FIRST-LAST/TOTAL` names, as
/// `([start, end), total)`. `None` for another unit, an unknown total (`*`), or numbers that
/// do not make a slice of the total (`LAST` before `FIRST`, or at or past `TOTAL`).
pub fn content_range(value: &HeaderValue) -> Option<((u64, u64), u64)> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes ")?;
    let (slice, total) = spec.split_once('/')?;
    let (first, last) = slice.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(first) && digits(last) && digits(total)) {
        return None;
    }
    let (first, last, total): (u64, u64, u64) =
        (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
    (first <= last && last < total).then_some(((first, last + 1), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_single_byte_ranges_within_the_length() {
        let range = |s: &str, len| parse(&HeaderValue::from_str(s).unwrap(), len);
        assert_eq!(range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(range("bytes=4-", 10), Some((4, 10)));
        assert_eq!(range("bytes=2-5", 10), Some((2, 6)));
        assert_eq!(range("bytes=2-500", 10), Some((2, 10)));
        assert_eq!(range("bytes=-3", 10), Some((7, 10)));
        assert_eq!(range("bytes=10-", 10), None);
        assert_eq!(range("bytes=5-2", 10), None);
        assert_eq!(range("bytes=0-1,4-5", 10), None);
        assert_eq!(range("items=0-1", 10), None);
    }

    #[test]
    fn reads_a_content_range_as_a_slice_of_its_total() {
        let range = |s: &str| content_range(&HeaderValue::from_str(s).unwrap());
        assert_eq!(range("bytes 0-99/1000"), Some(((0, 100), 1000)));
        assert_eq!(range("bytes 999-999/1000"), Some(((999, 1000), 1000)));
        assert_eq!(range("bytes 0-99/*"), None);
        assert_eq!(range("bytes */1000"), None);
        assert_eq!(range("bytes 5-4/1000"), None);
        assert_eq!(range("bytes 0-1000/1000"), None);
        assert_eq!(range("bytes +1-5/10"), None);
        assert_eq!(range("items 0-99/1000"), None);
    }
}

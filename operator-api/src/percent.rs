//! Hosts and repositories in the operator API's URLs: a path segment (`{host}`) or a query
//! value (`?repository=`) is percent-encoded by the client and decoded by the server, with
//! the `percent-encoding` crate.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What stays as it is: RFC 3986's unreserved characters (letters, digits, `-._~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `text` for a path segment or query value: everything but the unreserved
/// characters becomes `%XX` (`localhost:5000` is `localhost%3A5000`).
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// Decodes a path segment or query value: `%XX` becomes its byte and `+` a space (as in a
/// form); a `%` without two hex digits stays as it is, and bytes that are not UTF-8 become
/// U+FFFD.
pub fn decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_but_the_unreserved_characters() {
        assert_eq!(encode("localhost:5000"), "localhost%3A5000");
        assert_eq!(encode("ghcr.io/org/app"), "ghcr.io%2Forg%2Fapp");
        assert_eq!(encode("Az09-._~"), "Az09-._~");
        assert_eq!(encode("a b+c&d=e%"), "a%20b%2Bc%26d%3De%25");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn decodes_escapes_and_plus_signs() {
        assert_eq!(decode("localhost%3A5000"), "localhost:5000");
        assert_eq!(decode("localhost%3a5000"), "localhost:5000");
        assert_eq!(decode("a+b%2Bc"), "a b+c");
        assert_eq!(decode("%C3%A9"), "é");
    }

    #[test]
    fn keeps_what_is_not_an_escape_and_replaces_what_is_not_utf8() {
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn what_is_encoded_decodes_to_itself() {
        for text in ["localhost:5000", "ghcr.io/org/app:1.2", "a b+c&d=e%", "é/ü"] {
            assert_eq!(decode(&encode(text)), text);
        }
    }
}

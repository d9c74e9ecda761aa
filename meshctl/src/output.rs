//! Where results go: text for people on stdout, or one JSON document for scripts; errors on
//! stderr (as `{"error": ...}` in JSON mode), with the whole chain of causes.
//!
//! Text that came from elsewhere (a registry's tags, the facade's messages, a reference as
//! typed) goes through [`escape`] before it reaches a terminal; JSON needs nothing more, as
//! serde_json escapes every control character.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

/// `text` safe to print on a terminal: control characters (C0 with tab and newline, DEL, C1,
/// so also every ESC or CSI sequence) and the bidirectional overrides that reorder what is
/// shown are written as `\u{..}`, and a backslash as `\\`, so no output moves the cursor,
/// clears the screen or passes for other text.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if unsafe_char(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The output mode chosen on the command line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Output { json }
    }

    /// Prints a result: `text` for people, `json` for scripts.
    pub(crate) fn result(&self, text: &str, json: &Value) {
        if self.json {
            println!("{json}");
        } else {
            print!("{text}");
        }
    }

    /// Prints an error and its causes.
    pub(crate) fn error(&self, error: &anyhow::Error) {
        let message = format!("{error:#}");
        if self.json {
            eprintln!("{}", serde_json::json!({ "error": message }));
        } else {
            eprintln!("meshctl: error: {}", escape(&message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_control_character_and_leaves_the_rest() {
        assert!(matches!(
            escape("v1.2.3-rc_1"),
            Cow::Borrowed("v1.2.3-rc_1")
        ));
        assert_eq!(escape("évolué ✓"), "évolué ✓");
        assert_eq!(escape("evil\u{1b}[2J"), "evil\\u{1b}[2J");
        assert_eq!(escape("a\tb\nc\rd\0"), "a\\u{9}b\\u{a}c\\u{d}d\\u{0}");
        assert_eq!(escape("del\u{7f}"), "del\\u{7f}");
        // C1: CSI alone is a full escape introducer on many terminals.
        assert_eq!(escape("\u{9b}31m\u{85}"), "\\u{9b}31m\\u{85}");
        assert_eq!(escape("abc\u{202e}gpj.exe"), "abc\\u{202e}gpj.exe");
        // A backslash is doubled: escaped text never passes for an escape.
        assert_eq!(escape("a\\u{1b}"), "a\\\\u{1b}");
    }
}

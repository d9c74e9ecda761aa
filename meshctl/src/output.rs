//! Where results go: text for people on stdout, or one JSON document for scripts; errors on
//! stderr (as `{"error": ...}` in JSON mode), with the whole chain of causes.

use serde_json::Value;

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
            eprintln!("meshctl: error: {message}");
        }
    }
}

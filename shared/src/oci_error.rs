//! The OCI distribution spec's error body, built in one place:
//! `{"errors":[{"code":"NAME_UNKNOWN","message":"...","detail":...}]}`.
//!
//! Which status and code an error gets is each server's business (the facade's `respond`,
//! the layout registry, the operator API); the body's shape is this module's. The types
//! deserialize too, so a client reads back exactly what a server wrote.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The media type of an error body.
pub const CONTENT_TYPE: &str = "application/json";

/// An error body: one or more errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The errors, most important first.
    pub errors: Vec<ErrorEntry>,
}

/// One error of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// A machine-readable code (`NAME_UNKNOWN`, `DIGEST_INVALID`, `UNSUPPORTED`, ...).
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// Unstructured details, left out of the body when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

// === impl ErrorBody ===

impl ErrorBody {
    /// A body holding one error.
    pub fn new(code: &str, message: &str) -> Self {
        ErrorBody {
            errors: vec![ErrorEntry::new(code, message)],
        }
    }

    /// The body as JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        // Strings and a JSON value (whose map keys are strings) always serialize.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

// === impl ErrorEntry ===

impl ErrorEntry {
    /// An error without details.
    pub fn new(code: &str, message: &str) -> Self {
        ErrorEntry {
            code: code.to_owned(),
            message: message.to_owned(),
            detail: None,
        }
    }

    /// The same error with `detail`.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// The JSON body of one error: what most answers need.
pub fn body(code: &str, message: &str) -> Bytes {
    ErrorBody::new(code, message).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_the_distribution_specs_error_body() {
        let bytes = body("NAME_UNKNOWN", "repository name not known to registry");
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]})
        );
    }

    #[test]
    fn writes_detail_only_when_there_is_one() {
        let with = ErrorBody {
            errors: vec![
                ErrorEntry::new("DENIED", "no").with_detail(json!({"scope": "pull"})),
                ErrorEntry::new("UNSUPPORTED", "read-only"),
            ],
        };
        let value: serde_json::Value = serde_json::from_slice(&with.to_bytes()).unwrap();
        assert_eq!(value["errors"][0]["detail"], json!({"scope": "pull"}));
        assert!(value["errors"][1].get("detail").is_none(), "{value}");
    }

    #[test]
    fn reads_back_what_it_writes() {
        let written = ErrorBody::new("INVALID", "limit must be a positive number");
        let read: ErrorBody = serde_json::from_slice(&written.to_bytes()).unwrap();
        assert_eq!(read, written);
        // Bodies from other registries carry no detail, or one of any shape.
        let other: ErrorBody = serde_json::from_str(
            r#"{"errors":[{"code":"DENIED","message":"m","detail":[{"Type":"repository"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            other.errors[0].detail,
            Some(json!([{"Type": "repository"}]))
        );
    }
}

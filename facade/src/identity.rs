//! The device's identity, as logs name it: the subject of its client certificate.

use std::fmt;
use std::sync::Arc;

use x509_parser::prelude::{FromDer, X509Certificate};

/// A device, named by its certificate subject (`CN=device-42`) and serial number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity(Arc<str>);

// === impl DeviceIdentity ===

impl DeviceIdentity {
    /// Reads the identity from a DER certificate. The certificate was already verified by
    /// the TLS handshake; a subject that x509-parser cannot read is named as such rather than
    /// failing the connection.
    pub fn from_der(der: &[u8]) -> DeviceIdentity {
        let text = match X509Certificate::from_der(der) {
            Ok((_, cert)) => format!("{} serial={}", cert.subject(), cert.raw_serial_as_string()),
            Err(_) => "(unreadable certificate subject)".to_owned(),
        };
        DeviceIdentity(text.into())
    }

    /// The identity for a connection that presented no certificate (never reached: the
    /// handshake requires one).
    pub fn unknown() -> DeviceIdentity {
        DeviceIdentity("(no certificate)".into())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use meshanics_shared::devpki::DevCa;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn names_a_device_by_its_certificate_subject() {
        let mut ca = DevCa::new("fleet CA").unwrap();
        let device = ca.issue_device("device-42").unwrap();
        let der = CertificateDer::from_pem_slice(device.cert_pem.as_bytes()).unwrap();
        let identity = DeviceIdentity::from_der(&der);
        assert!(
            identity.as_str().starts_with("CN=device-42 serial="),
            "{identity}"
        );
    }

    #[test]
    fn names_garbage_as_unreadable() {
        assert_eq!(
            DeviceIdentity::from_der(b"not a certificate").as_str(),
            "(unreadable certificate subject)"
        );
    }
}

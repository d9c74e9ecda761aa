//! A development and test PKI: a CA, server certificates and device certificates, made with
//! rcgen. Used by the tests, the benchmarks and the demo; never by a production path (enable
//! the `devpki` feature to get it).
//!
//! Keys are ECDSA P-256. Device certificates carry the device id as common name and the
//! client-auth extended key usage; server certificates carry their names as DNS or IP
//! subject alternative names and the server-auth usage.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};

/// Why a development certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("making the development {what}: {source}")]
pub struct DevPkiError {
    what: &'static str,
    #[source]
    source: rcgen::Error,
}

/// A development certificate authority.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    next_serial: u64,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The serial number, for revocation.
    pub serial: u64,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("next_serial", &self.next_serial)
            .finish()
    }
}

// === impl DevCa ===

impl DevCa {
    /// A new self-signed CA named `name`, valid from a day ago for ten years.
    pub fn new(name: &str) -> Result<Self, DevPkiError> {
        let err = |source| DevPkiError { what: "CA", source };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from(1u64));
        set_validity(
            &mut params,
            SystemTime::now() - DAY,
            SystemTime::now() + 3650 * DAY,
        );
        let key = KeyPair::generate().map_err(err)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(err)?;
        Ok(DevCa {
            issuer,
            next_serial: 2,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid for a year.
    pub fn issue_server(&mut self, names: &[&str]) -> Result<Issued, DevPkiError> {
        let err = |source| DevPkiError {
            what: "server certificate",
            source,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name = dn(names.first().copied().unwrap_or("server"));
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().map_err(err)?),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(
            params,
            SystemTime::now() - DAY,
            SystemTime::now() + 365 * DAY,
            "server certificate",
        )
    }

    /// A device (client) certificate with `device_id` as common name, valid for a year.
    pub fn issue_device(&mut self, device_id: &str) -> Result<Issued, DevPkiError> {
        self.issue_device_valid(
            device_id,
            SystemTime::now() - DAY,
            SystemTime::now() + 365 * DAY,
        )
    }

    /// A device certificate with an explicit validity window (an expired one for tests).
    pub fn issue_device_valid(
        &mut self,
        device_id: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, DevPkiError> {
        let err = |source| DevPkiError {
            what: "device certificate",
            source,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name = dn(device_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, not_before, not_after, "device certificate")
    }

    /// A CRL (PEM) revoking the given certificates, valid for a week.
    pub fn crl(&self, revoked: &[&Issued]) -> Result<String, DevPkiError> {
        let now = SystemTime::now();
        self.crl_valid(revoked, now - DAY, now + 7 * DAY)
    }

    /// A CRL (PEM) revoking the given certificates, issued at `this_update` and due to be
    /// replaced at `next_update` (in the past for an expired one).
    pub fn crl_valid(
        &self,
        revoked: &[&Issued],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<String, DevPkiError> {
        let err = |source| DevPkiError {
            what: "CRL",
            source,
        };
        let params = CertificateRevocationListParams {
            this_update: this_update.into(),
            next_update: next_update.into(),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from(c.serial),
                    revocation_time: this_update.into(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map_err(err)?
            .pem()
            .map_err(err)
    }

    fn issue(
        &mut self,
        mut params: CertificateParams,
        not_before: SystemTime,
        not_after: SystemTime,
        what: &'static str,
    ) -> Result<Issued, DevPkiError> {
        let err = |source| DevPkiError { what, source };
        let serial = self.next_serial;
        self.next_serial += 1;
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, not_before, not_after);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }
}

const DAY: Duration = Duration::from_secs(86_400);

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    params.not_before = not_before.into();
    params.not_after = not_after.into();
}

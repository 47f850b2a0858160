//! How the relay reaches PostgreSQL: the URL's settings and TLS by libpq's `sslmode`, with the
//! rustls the relay already links (managed databases — Neon, Supabase, RDS, Cloud SQL — refuse
//! plain text).
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (libpq's default) | if the server offers it | not checked |
//! | `require` | always | not checked — unless `sslrootcert` is given, then as `verify-ca` (libpq does the same) |
//! | `verify-ca` | always | signed by a trusted root |
//! | `verify-full` | always | signed by a trusted root and issued for the host connected to |
//!
//! The trusted roots are the operating system's, or the PEM file `sslrootcert` names.
//! `tokio-postgres` knows neither the `verify-*` modes nor `sslrootcert`, so both are taken out of
//! the URL here and the rest is left to it.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => return Err("sslmode=allow is not supported: use disable, prefer or require".to_owned()),
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// A PostgreSQL URL made ready to connect: its settings and the TLS connector its `sslmode`
/// asks for.
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
}

impl Target {
    /// Reads a `postgres://` URL.
    ///
    /// # Errors
    /// A malformed URL, an unknown `sslmode`, or an `sslrootcert` that cannot be read: one line
    /// saying which.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let mut parsed = url::Url::parse(url).map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        let (mut mode, mut root_file) = (Mode::Prefer, None);
        let mut kept = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "sslmode" => mode = Mode::parse(&value)?,
                "sslrootcert" => root_file = Some(value.into_owned()),
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        parsed.set_query(None);
        if !kept.is_empty() {
            parsed.query_pairs_mut().extend_pairs(kept);
        }
        let mut config: tokio_postgres::Config =
            parsed.as_str().parse().map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        config.ssl_mode(match mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        });
        let roots = root_file.as_deref().map(read_roots).transpose()?;
        let check = match (mode, roots.is_some()) {
            (Mode::VerifyFull, _) => Check::Full,
            (Mode::VerifyCa, _) | (Mode::Require, true) => Check::Chain,
            _ => Check::Nothing,
        };
        Ok(Self { config, tls: MakeRustlsConnect::new(client_config(check, roots)?) })
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    /// Signed by a trusted root; any name.
    Chain,
    /// Signed by a trusted root, for the host connected to.
    Full,
}

fn read_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
        roots.add(cert).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {path}: no certificate in it"));
    }
    Ok(roots)
}

/// The TLS settings for `check` against `roots` (the operating system's when `None`), on
/// aws-lc-rs like every other TLS connection of the relay (one crypto provider in the binary).
fn client_config(check: Check, roots: Option<RootCertStore>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        Some(roots) => WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| format!("TLS: {e}"))?,
        None => {
            Arc::new(rustls_platform_verifier::Verifier::new(Arc::clone(&provider)).map_err(|e| format!("TLS: {e}"))?)
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Full => verifier,
        Check::Chain => Arc::new(Lenient { full: verifier, chain: true }),
        Check::Nothing => Arc::new(Lenient { full: verifier, chain: false }),
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// Checks less of the server's certificate than `full` does: with `chain`, that a trusted root
/// signed it but not for which name (`verify-ca`); without, nothing (`prefer`, `require`). The
/// handshake's own signatures are always checked.
#[derive(Debug)]
struct Lenient {
    full: Arc<dyn ServerCertVerifier>,
    chain: bool,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if !self.chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.full.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.full.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.full.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.full.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(url: &str) -> SslMode {
        Target::parse(url).map(|t| t.config.get_ssl_mode()).unwrap()
    }

    #[test]
    fn sslmode_follows_libpq_and_is_taken_out_of_the_url() {
        assert_eq!(mode_of("postgres://u@h/db"), SslMode::Prefer, "libpq's default");
        assert_eq!(mode_of("postgres://u@h/db?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode_of("postgres://u@h/db?sslmode=verify-full"), SslMode::Require);
        let target = Target::parse("postgres://u@h:5433/db?sslmode=verify-ca&application_name=relay").unwrap();
        assert_eq!(target.config.get_application_name(), Some("relay"), "other settings are kept");
        assert_eq!(target.config.get_ports(), [5433]);
    }

    #[test]
    fn bad_settings_are_one_line_that_says_which() {
        let err = |url: &str| Target::parse(url).err().unwrap();
        assert!(err("postgres://u@h/db?sslmode=secure").starts_with("unknown sslmode \"secure\""));
        assert!(err("postgres://u@h/db?sslmode=allow").contains("not supported"));
        let missing = err("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/root.crt");
        assert!(missing.starts_with("sslrootcert /nonexistent/root.crt:") && !missing.contains('\n'), "{missing}");
    }
}

//! Outbound HTTPS: one way to build a hyper connector for the node's clients (the OIDC
//! provider client in `auth::oidc`, the mirror's upstream client in the node crate).
//!
//! rustls on aws-lc-rs (the provider librqbit already brings, so there is one crypto stack in
//! the binary), trusting the system roots (`rustls-native-certs`, i.e. /etc/ssl/certs) plus
//! optional extra PEM bundles (a private CA). The connector speaks both `https://` and plain
//! `http://`; callers decide which URLs they allow.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

/// A hyper connector for `https://` (rustls) and `http://`.
pub type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// Reads a CA bundle: a PEM file with at least one certificate rustls accepts. `what` names
/// the setting in errors (e.g. `auth.oidc.ca_file`).
pub fn load_ca_file(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = format!("{what} {}", path.display());
    let pem = std::fs::read(path).map_err(|e| format!("{what}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate in the file"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{what}: unusable certificate: {e}"))?;
    }
    Ok(certs)
}

/// Builds the connector: system roots plus each `(setting name, path)` CA bundle. `purpose`
/// labels the log lines (e.g. `oidc`, `upstream`).
pub fn https_connector(
    purpose: &str,
    ca_files: &[(&str, &Path)],
) -> Result<HttpsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if let Some(first) = native.errors.first() {
        tracing::warn!(
            errors = native.errors.len(),
            first = %first,
            "{purpose}: some system CA certificates could not be loaded"
        );
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    for (what, path) in ca_files {
        for cert in load_ca_file(what, path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{what} {}: {e}", path.display()))?;
        }
    }
    tracing::debug!(
        system = added,
        ignored,
        total = roots.len(),
        "{purpose}: trusted CA certificates"
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{purpose} TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// An error with its sources ("client error (Connect): invalid peer certificate: …"): the
/// hyper error alone says only "client error (Connect)".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

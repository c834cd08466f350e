//! HTTPS at start-up: the configured certificate and key, or a self-signed pair made on first
//! start in `<data_dir>/tls/` and reused afterwards, so a LAN install gets transport security
//! without a CA. The certificate's SHA-256 fingerprint is logged so a user can check, on first
//! visit, that the certificate the browser shows is the server's own.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wattline_mqtt::tls::rustls::ServerConfig;

use crate::config::Config;

/// The HTTPS configuration, or `None` when the API serves plain HTTP.
pub fn https_config(config: &Config) -> anyhow::Result<Option<ServerConfig>> {
    let (cert, key, generated) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            if config.tls_self_signed {
                tracing::info!("tls_cert and tls_key are set; tls_self_signed is ignored");
            }
            (cert.clone(), key.clone(), false)
        }
        (None, None) if config.tls_self_signed => {
            let (cert, key) = self_signed_files(&config.data_dir)?;
            (cert, key, true)
        }
        (None, None) => return Ok(None),
        _ => anyhow::bail!("HTTPS needs both tls_cert and tls_key"),
    };
    let identity = wattline_mqtt::tls::load_identity(&cert, &key)
        .with_context(|| "loading the HTTPS certificate (tls_cert) and key (tls_key)")?;
    let fingerprint = fingerprint(&identity.certs[0]);
    let server = wattline_mqtt::tls::server_config(identity).with_context(|| {
        format!(
            "HTTPS certificate {} and key {} do not go together",
            cert.display(),
            key.display()
        )
    })?;
    tracing::info!(
        cert = %cert.display(),
        sha256 = %fingerprint,
        self_signed = generated,
        "HTTPS certificate (SHA-256 fingerprint {fingerprint})"
    );
    Ok(Some(server))
}

/// SHA-256 of the DER certificate as colon-separated hex pairs, as browsers and
/// `openssl x509 -fingerprint -sha256` show it.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `<data_dir>/tls/cert.pem` and `key.pem`, generated when either is missing.
fn self_signed_files(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        tracing::info!(dir = %dir.display(), "reusing the self-signed HTTPS certificate");
        return Ok((cert_path, key_path));
    }
    create_private_dir(&dir)?;
    let host = hostname();
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    names.extend(host.clone());
    let (cert_pem, key_pem) = generate(&names, host.as_deref().unwrap_or("localhost"))?;
    // Key first, certificate last: the pair counts as present only once the certificate
    // is, so a crash in between makes the next start generate both again.
    write_atomically(&key_path, &key_pem, 0o600)?;
    write_atomically(&cert_path, &cert_pem, 0o644)?;
    tracing::warn!(
        cert = %cert_path.display(),
        names = %names.join(", "),
        "generated a self-signed HTTPS certificate; browsers will warn until it is trusted (compare the fingerprint below)"
    );
    Ok((cert_path, key_path))
}

/// A self-signed certificate for `names` (DNS names or IP addresses) and its key, as PEM.
/// Valid from yesterday (clocks of LAN devices drift) for ten years: there is no one to
/// renew it, and replacing it means every client has to trust the new one again.
fn generate(names: &[String], host: &str) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .context("making the self-signed certificate's names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("Wattline on {host}"));
    let yesterday = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(24))?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let ymd = |years: i16| {
        rcgen::date_time_ymd(
            i32::from(yesterday.year() + years),
            yesterday.month() as u8,
            // No 29 February ten years on.
            (yesterday.day() as u8).min(28),
        )
    };
    params.not_before = ymd(0);
    params.not_after = ymd(10);
    let key = rcgen::KeyPair::generate().context("generating the HTTPS key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the self-signed certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `dir` readable by the owner only; its parents (the data directory) as usual.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `path` through a temporary file and a rename, so it is whole or absent.
fn write_atomically(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// The machine's host name, when it is a usable DNS name.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
        })?;
    let name = name.trim().to_ascii_lowercase();
    let usable = !name.is_empty()
        && name != "localhost"
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    usable.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_files_are_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed_files(dir.path()).unwrap();
        let first = std::fs::read(&cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let identity = wattline_mqtt::tls::load_identity(&cert, &key).unwrap();
        wattline_mqtt::tls::server_config(identity).expect("the key fits the certificate");
        let again = self_signed_files(dir.path()).unwrap();
        assert_eq!(again, (cert.clone(), key.clone()));
        assert_eq!(
            std::fs::read(&cert).unwrap(),
            first,
            "reused, not regenerated"
        );
        // A lost certificate means a new pair, not a certificate for a key it does not fit.
        std::fs::remove_file(&cert).unwrap();
        self_signed_files(dir.path()).unwrap();
        assert_ne!(std::fs::read(&cert).unwrap(), first);
    }

    #[test]
    fn the_certificate_verifies_for_every_name_it_is_made_for() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        use std::sync::Arc;
        use wattline_mqtt::tls::rustls;

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed_files(dir.path()).unwrap();
        let der: CertificateDer<'static> = wattline_mqtt::tls::load_identity(&cert, &key)
            .unwrap()
            .certs
            .remove(0);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
        names.extend(hostname());
        let verify = |name: &str| {
            verifier.verify_server_cert(
                &der,
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        for name in &names {
            verify(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify("example.com").is_err());
        assert!(verify("192.0.2.1").is_err());
    }

    #[test]
    fn fingerprints_look_like_the_browsers_ones() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF:"), "{f}");
    }
}

//! Which certificate authorities the slave's own https clients trust: the
//! commit statuses ([`crate::slave::forge`]) and the one-request fetch
//! ([`crate::slave::build::pack_fetch`]). By default the public roots built
//! into the binary (Mozilla's, through webpki-roots: the slave's image needs
//! no CA bundle). With `SLAVE_CA_FILE`, exactly the certificates of that PEM
//! file: a self-hosted forge's private CA, or the system's bundle it was
//! added to (`update-ca-certificates`), which git reads too.
//!
//! Read once at start ([`install`]); every client built after asks [`tls`].

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};

/// Largest SLAVE_CA_FILE read (Debian's whole bundle is about 220 KiB).
pub const MAX_FILE: u64 = 4 << 20;

static TLS: OnceLock<TlsConfig> = OnceLock::new();

/// Reads the certificates of `file` (SLAVE_CA_FILE) and makes them the only
/// roots of the slave's https clients from now on; `None` keeps the public
/// roots. Returns how many certificates it read. `Err` names the file and
/// what is wrong with it (the slave does not start).
pub fn install(file: Option<&Path>) -> Result<usize, String> {
    let Some(file) = file else { return Ok(0) };
    let certs = read(file).map_err(|why| format!("SLAVE_CA_FILE={:?}: {why}", file.display().to_string()))?;
    let n = certs.len();
    let config = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&certs)).build();
    TLS.set(config).map_err(|_| "SLAVE_CA_FILE: read twice".to_string())?;
    Ok(n)
}

/// The TLS configuration for an https client of the slave.
pub fn tls() -> TlsConfig {
    TLS.get().cloned().unwrap_or_default()
}

/// The certificates of a PEM file: at least one, nothing unreadable.
fn read(file: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let mut pem = Vec::new();
    std::fs::File::open(file).and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut pem)).map_err(|e| format!("cannot read it: {e}"))?;
    if pem.len() as u64 > MAX_FILE {
        return Err(format!("over {MAX_FILE} bytes"));
    }
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item.map_err(|e| format!("not PEM: {e}"))? {
            PemItem::Certificate(cert) => certs.push(cert),
            PemItem::PrivateKey(_) => return Err("it holds a private key: give the CA's certificates only".into()),
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err("no certificate in it (expected PEM `-----BEGIN CERTIFICATE-----` blocks)".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256
    /// -nodes -subj /CN=test-ca -days 3650`).
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBejCCAR+gAwIBAgIUeie9CSqMq39VvqUMC1jF2B6IXFMwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAeFw0yNjEyMDcyMDA3NTdaFw0zNjEyMDQyMDA3
NTdaMBIxEDAOBgNVBAMMB3Rlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQ7y5ezvrYo5qDTV1lUqYmodp/W6tHRDPSOANvAG1Y/SsXzmXk+UXt0sjp+2NMn
K/2jKc3mC09PFsVzETfHbrrro1MwUTAdBgNVHQ4EFgQUccUcQ0rXIyu7mEufPUiy
EWdG+6gwHwYDVR0jBBgwFoAUccUcQ0rXIyu7mEufPUiyEWdG+6gwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA8St9uXGOm7vNGZioA4k0SoeONCO3
BIP2aWonrhRUGNYCIQC70Rmh/OD5SCraAu4Z3ddx/9D+SOXnC6lXAq/+Pe7Zxg==
-----END CERTIFICATE-----
";

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("ci-trust-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_ca_file_is_its_certificates_and_nothing_else() {
        let two = file("two.pem", &format!("# a bundle\n{CERT}\n{CERT}"));
        assert_eq!(read(&two).unwrap().len(), 2);
        for (name, text, says) in [
            ("empty.pem", "", "no certificate"),
            ("text.pem", "not a certificate\n", "no certificate"),
            ("key.pem", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOY+VS62JgrqK6egBVG2NRcXcIxXLS1PvLebR0w6mdN+\n-----END PRIVATE KEY-----\n", "private key"),
            ("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n", "not PEM"),
        ] {
            let err = read(&file(name, text)).unwrap_err();
            assert!(err.contains(says), "{name}: {err}");
        }
        assert!(read(Path::new("/nonexistent/ca.pem")).unwrap_err().contains("cannot read it"));
        let big = file("big.pem", &"#".repeat(MAX_FILE as usize + 1));
        assert!(read(&big).unwrap_err().contains("over"));
        for name in ["two.pem", "empty.pem", "text.pem", "key.pem", "cut.pem", "big.pem"] {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!("ci-trust-{}-{name}", std::process::id())));
        }
    }
}

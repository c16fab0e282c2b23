//! TLS with rustls: the listeners' side ([`ServerTls`]) and the backing Redis's
//! ([`ClientTls`]).
//!
//! Certificates and keys are PEM files named by options; every failure to read
//! or use one names the option and the file, so a bad path stops the proxy at
//! startup with a message that says which. Both sides use rustls's `ring`
//! provider and its safe defaults: TLS 1.2 and 1.3 only.
//!
//! The listeners' certificate, key and client CA are re-read on demand
//! ([`ServerTls::reload`], which the binary calls on SIGHUP): a connection
//! accepted afterwards gets the new ones, established connections keep the
//! session they have. A reload that fails leaves the old configuration in place.

mod der;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A TLS file that cannot be used, or a configuration rustls refuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{option} {}: cannot read it: {source}", path.display())]
    Read {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The file holds no usable PEM item of the kind expected.
    #[error("{option} {}: {problem}", path.display())]
    Pem {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refuses the certificates and key together (a key that is not the
    /// certificate's, say).
    #[error("{option}: {source}")]
    Rustls {
        /// The option the problem is with.
        option: &'static str,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// The crypto provider every configuration here uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in the PEM file `path`, at least one.
fn certificates(option: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(option, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(option, path, error.to_string()))?;
    if certificates.is_empty() {
        return Err(pem_error(option, path, "no CERTIFICATE in the file".into()));
    }
    Ok(certificates)
}

/// The private key in the PEM file `path`.
fn private_key(option: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(option, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| {
        pem_error(
            option,
            path,
            format!("no private key in the file (PKCS#8, PKCS#1 or SEC1 PEM): {error}"),
        )
    })
}

/// A root store of the certificates in `path`.
fn roots(option: &'static str, path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(option, path)? {
        roots
            .add(certificate)
            .map_err(|source| Error::Rustls { option, source })?;
    }
    Ok(roots)
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        option,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(option: &'static str, path: &Path, problem: String) -> Error {
    Error::Pem {
        option,
        path: path.to_owned(),
        problem,
    }
}

/// The listeners' TLS files.
#[derive(Debug, Clone)]
pub(crate) struct ServerFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// Clients must present a certificate one of these signed.
    pub(crate) client_ca: Option<PathBuf>,
}

/// What a load of the listeners' files found.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// When the certificate expires (`notAfter`), as `YYYY-MM-DD HH:MM:SS UTC`.
    pub(crate) expires: Option<String>,
}

/// The listeners' TLS configuration, replaced whole on reload.
#[derive(Debug)]
pub(crate) struct ServerTls {
    files: ServerFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads `files`.
    ///
    /// # Errors
    ///
    /// [`Error`] naming the option whose file cannot be used.
    pub(crate) fn load(files: ServerFiles) -> Result<(Self, Loaded), Error> {
        let (config, loaded) = Self::build(&files)?;
        let tls = Self {
            files,
            current: RwLock::new(Arc::new(config)),
        };
        Ok((tls, loaded))
    }

    /// Reads the files again; new connections use what they hold from now on.
    ///
    /// # Errors
    ///
    /// As for [`ServerTls::load`]; the configuration in use is then kept.
    pub(crate) fn reload(&self) -> Result<Loaded, Error> {
        let (config, loaded) = Self::build(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(loaded)
    }

    /// An acceptor with the configuration in force now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    fn build(files: &ServerFiles) -> Result<(ServerConfig, Loaded), Error> {
        let chain = certificates("--tls-cert", &files.cert)?;
        let key = private_key("--tls-key", &files.key)?;
        let expires = der::not_after(&chain[0]);
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| Error::Rustls {
                option: "--tls-cert",
                source,
            })?;
        let builder = match &files.client_ca {
            Some(path) => {
                let roots = roots("--tls-client-ca", path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|error| pem_error("--tls-client-ca", path, error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|source| Error::Rustls {
                option: "--tls-key",
                source,
            })?;
        Ok((config, Loaded { expires }))
    }
}

/// The files for TLS to the backing Redis.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientFiles {
    /// CA certificates of Redis's certificate; `None`: the system's roots.
    pub(crate) ca: Option<PathBuf>,
    /// The proxy's certificate chain and key, for Redis's `tls-auth-clients`.
    pub(crate) cert_and_key: Option<(PathBuf, PathBuf)>,
}

/// TLS to the backing Redis: one configuration for every connection.
#[derive(Clone)]
pub(crate) struct ClientTls {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// A client configuration from `files`.
    ///
    /// # Errors
    ///
    /// [`Error`] naming the option whose file cannot be used.
    pub(crate) fn load(files: &ClientFiles) -> Result<Self, Error> {
        let roots = match &files.ca {
            Some(path) => roots("--redis-tls-ca", path)?,
            None => {
                let mut roots = RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                roots
            }
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| Error::Rustls {
                option: "--redis-tls-ca",
                source,
            })?
            .with_root_certificates(roots);
        let config = match &files.cert_and_key {
            Some((cert, key)) => {
                let chain = certificates("--redis-tls-cert", cert)?;
                let key = private_key("--redis-tls-key", key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| Error::Rustls {
                        option: "--redis-tls-key",
                        source,
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the TLS handshake over `stream` with the server `host` (a name or an
    /// IP address, checked against its certificate).
    ///
    /// # Errors
    ///
    /// The handshake's error, or an `InvalidInput` error for a host that is
    /// neither a DNS name nor an IP address.
    pub(crate) async fn connect(
        &self,
        host: &str,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = ServerName::try_from(host.to_owned()).map_err(|error| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string())
        })?;
        self.connector.connect(name, stream).await
    }
}

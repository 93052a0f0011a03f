//! Where a PEM comes from: a file (which a reload re-reads) or inline text.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

#[derive(Debug, Clone)]
pub(crate) enum PemSource {
    File { field: &'static str, path: PathBuf },
    Inline { field: &'static str, text: String },
}

impl PemSource {
    /// The `*_file` or the `*_pem` setting, whichever is set (validation
    /// rejects both); each with its field path for errors.
    pub(super) fn pick(file: (&'static str, Option<&PathBuf>), pem: (&'static str, Option<&String>)) -> Option<Self> {
        match (file, pem) {
            ((field, Some(path)), _) => Some(Self::File { field, path: path.clone() }),
            (_, (field, Some(text))) => Some(Self::Inline { field, text: text.clone() }),
            _ => None,
        }
    }

    pub(super) fn file(field: &'static str, path: &Path) -> Self {
        Self::File { field, path: path.to_owned() }
    }

    pub(super) fn path(&self) -> Option<&Path> {
        match self {
            Self::File { path, .. } => Some(path),
            Self::Inline { .. } => None,
        }
    }

    /// An error about this source's content.
    pub(super) fn invalid(&self, reason: impl std::fmt::Display) -> TlsError {
        match self {
            Self::File { field, path } => {
                TlsError::File { field, path: path.display().to_string(), reason: reason.to_string() }
            }
            Self::Inline { field, .. } => TlsError::Invalid { field, reason: reason.to_string() },
        }
    }

    fn bytes(&self) -> Result<Vec<u8>, TlsError> {
        match self {
            Self::File { path, .. } => std::fs::read(path).map_err(|e| self.invalid(e)),
            Self::Inline { text, .. } => Ok(text.clone().into_bytes()),
        }
    }

    pub(super) fn certs(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes()?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(e))?;
        if certs.is_empty() {
            return Err(self.invalid("no PEM certificates found"));
        }
        Ok(certs)
    }

    pub(super) fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.bytes()?)
            .map_err(|e| self.invalid(format!("{e}; expected a PEM private key (PKCS#8, PKCS#1 or SEC1)")))
    }
}

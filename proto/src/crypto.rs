//! The one crypto provider of the project: identities load their keys with
//! it and every TLS configuration is built on it. It sits below both
//! `identity` and `tls`, which use it and each other in one direction only
//! (`tls` builds on `identity`).

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider every configuration in this project uses.
pub fn provider() -> Arc<CryptoProvider> {
    // Built once: a provider is a table of algorithms, the same for every
    // caller.
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

//! TLS set-up shared by every binary and test that talks to the API server or a store.

/// Installs rustls's `ring` provider as the process default. Both `ring` (kube) and
/// `aws-lc-rs` (object_store) are compiled in, so rustls cannot pick one by itself and panics
/// at the first TLS connection unless a process chooses. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

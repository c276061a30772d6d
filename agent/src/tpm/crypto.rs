//! The spec's key derivation and session cryptography (TPM 2.0 Part 1, 11.4 and 19.6), SHA-256
//! only: KDFa, KDFe, HMAC and AES-128-CFB parameter encryption.
//!
//! Zeroised: every derived key and block (`Zeroizing`), and, with the crates' `zeroize` features
//! on, the AES-128 key schedule (`aes`) and the CFB register (`cfb-mode`) when the cipher is
//! dropped. Not zeroised: the SHA-256 and HMAC-SHA256 states inside `sha2` 0.10 and `hmac`
//! 0.12 (the inner/outer padded-key states of an HMAC over the session key, the hashing state
//! of KDFe over the ECDH secret), which these crates keep in plain structs with no `Zeroize`
//! support; they are stack temporaries of the functions below and are overwritten by later
//! calls, not wiped.

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for HMAC.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// KDFa (SP 800-108 counter mode with HMAC-SHA256). `label` is given without its terminating NUL.
pub fn kdfa(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let block = Zeroizing::new(hmac_sha256(
            key,
            &[
                &counter.to_be_bytes(),
                label.as_bytes(),
                &[0],
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        ));
        out.extend_from_slice(&block[..]);
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// KDFe (SP 800-56A concatenation KDF with SHA-256). `label` is given without its terminating NUL.
pub fn kdfe(
    z: &[u8],
    label: &str,
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let block = Zeroizing::new(sha256(&[
            &counter.to_be_bytes(),
            z,
            label.as_bytes(),
            &[0],
            party_u,
            party_v,
        ]));
        out.extend_from_slice(&block[..]);
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// AES-128-CFB parameter encryption key and IV: KDFa(sessionValue, "CFB", newer, older, 256).
fn cfb_key_iv(session_value: &[u8], nonce_newer: &[u8], nonce_older: &[u8]) -> Zeroizing<Vec<u8>> {
    kdfa(session_value, "CFB", nonce_newer, nonce_older, 256)
}

pub fn cfb_encrypt(session_value: &[u8], nonce_newer: &[u8], nonce_older: &[u8], data: &mut [u8]) {
    let kv = cfb_key_iv(session_value, nonce_newer, nonce_older);
    cfb_mode::Encryptor::<Aes128>::new(kv[..16].into(), kv[16..32].into()).encrypt(data);
}

pub fn cfb_decrypt(session_value: &[u8], nonce_newer: &[u8], nonce_older: &[u8], data: &mut [u8]) {
    let kv = cfb_key_iv(session_value, nonce_newer, nonce_older);
    cfb_mode::Decryptor::<Aes128>::new(kv[..16].into(), kv[16..32].into()).decrypt(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfb_round_trips_and_depends_on_nonces() {
        let mut data = *b"thirty-two bytes of pretend seed";
        cfb_encrypt(b"key", b"n1", b"n2", &mut data);
        assert_ne!(&data, b"thirty-two bytes of pretend seed");
        let mut other = data;
        cfb_decrypt(b"key", b"n1", b"n3", &mut other);
        assert_ne!(&other, b"thirty-two bytes of pretend seed");
        cfb_decrypt(b"key", b"n1", b"n2", &mut data);
        assert_eq!(&data, b"thirty-two bytes of pretend seed");
    }

    #[test]
    fn kdfa_lengths() {
        assert_eq!(kdfa(b"k", "ATH", b"a", b"b", 256).len(), 32);
        assert_eq!(kdfa(b"k", "CFB", b"a", b"b", 384).len(), 48);
        assert_ne!(
            kdfa(b"k", "ATH", b"a", b"b", 256)[..],
            kdfa(b"k", "ATH", b"b", b"a", 256)[..]
        );
    }
}

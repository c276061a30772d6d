//! PCR selections and the PolicyPCR digest, computed in software from expected PCR values.
//!
//! The digest is never taken from the TPM's current state at enrolment: an enrolment after the
//! lock PCR was extended would otherwise bind the seed to the locked value.

use super::crypto::sha256;
use super::wire::Writer;

pub const ALG_SHA256: u16 = 0x000B;
pub const CC_POLICY_PCR: u32 = 0x0000_017F;
/// PCRs a PC-client TPM has (0..=23).
pub const PCR_COUNT: u32 = 24;

/// TPML_PCR_SELECTION with one SHA-256 bank selecting `pcrs`.
pub fn pcr_selection(pcrs: &[u32]) -> Vec<u8> {
    let mut bitmap = [0u8; 3];
    for &p in pcrs {
        if p < PCR_COUNT {
            bitmap[(p / 8) as usize] |= 1 << (p % 8);
        }
    }
    let mut w = Writer::new();
    w.u32(1).u16(ALG_SHA256).u8(3).bytes(&bitmap);
    w.into_inner()
}

/// Selected PCRs in the order the TPM reports and hashes them (ascending, no duplicates).
pub fn normalise(pcrs: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = pcrs.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// policyDigest after TPM2_PolicyPCR from an empty policy, for `pcrs` (ascending) holding
/// `values` (same order).
pub fn policy_pcr(pcrs: &[u32], values: &[[u8; 32]]) -> [u8; 32] {
    let parts: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
    let pcr_digest = sha256(&parts);
    let selection = pcr_selection(pcrs);
    sha256(&[
        &[0u8; 32],
        &CC_POLICY_PCR.to_be_bytes(),
        &selection,
        &pcr_digest,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_bitmap() {
        assert_eq!(
            pcr_selection(&[7, 15]),
            vec![0, 0, 0, 1, 0, 0x0B, 3, 0x80, 0x80, 0]
        );
    }

    /// The digest is cross-checked against the TPM's own PolicyGetDigest by the swtpm tests.
    #[test]
    fn policy_depends_on_values() {
        let a = policy_pcr(&[7, 15], &[[0; 32], [0; 32]]);
        let b = policy_pcr(&[7, 15], &[[1; 32], [0; 32]]);
        assert_ne!(a, b);
    }
}

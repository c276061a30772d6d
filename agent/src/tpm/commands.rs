//! The TPM commands the agent uses, on top of [`Tpm::execute`].

use zeroize::Zeroizing;

use super::client::{Auth, RH_OWNER, SaltKey, Session, Tpm};
use super::crypto::sha256;
use super::error::TpmError;
use super::policy::{ALG_SHA256, pcr_selection};
use super::wire::{Reader, Writer};

pub const ALG_ECC: u16 = 0x0023;
pub const ALG_AES: u16 = 0x0006;
pub const ALG_CFB: u16 = 0x0043;
pub const ALG_NULL: u16 = 0x0010;
pub const ECC_NIST_P256: u16 = 0x0003;

/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | decrypt:
/// the TCG storage-root-key shape.
pub const SRK_ATTRIBUTES: u32 = 0x0003_0472;

/// The fixed template of the salt key (same key every boot for the same owner seed): the TCG
/// provisioning guidance's ECC P-256 storage key, with an empty unique field.
pub fn salt_key_template() -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(ALG_ECC)
        .u16(ALG_SHA256)
        .u32(SRK_ATTRIBUTES)
        .tpm2b(&[])
        .u16(ALG_AES)
        .u16(128)
        .u16(ALG_CFB)
        .u16(ALG_NULL)
        .u16(ECC_NIST_P256)
        .u16(ALG_NULL);
    w.into_inner()
}

/// Public area of an NV index (TPMS_NV_PUBLIC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    pub index: u32,
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub data_size: u16,
}

impl NvPublic {
    pub fn marshal(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.index)
            .u16(self.name_alg)
            .u32(self.attributes)
            .tpm2b(&self.auth_policy)
            .u16(self.data_size);
        w.into_inner()
    }

    /// nameAlg || H(TPMS_NV_PUBLIC): the name that enters cpHash.
    pub fn name(&self) -> Vec<u8> {
        let mut n = ALG_SHA256.to_be_bytes().to_vec();
        n.extend_from_slice(&sha256(&[&self.marshal()]));
        n
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, TpmError> {
        Ok(Self {
            index: r.u32()?,
            name_alg: r.u16()?,
            attributes: r.u32()?,
            auth_policy: r.tpm2b()?.to_vec(),
            data_size: r.u16()?,
        })
    }
}

fn object_name(public: &[u8]) -> Vec<u8> {
    let mut n = ALG_SHA256.to_be_bytes().to_vec();
    n.extend_from_slice(&sha256(&[public]));
    n
}

/// Checks a returned TPMT_PUBLIC against the salt key template and extracts its point.
fn parse_salt_public(public: &[u8]) -> Result<p256::PublicKey, TpmError> {
    let template = salt_key_template();
    if public.len() < template.len() || public[..template.len()] != template[..] {
        return Err(TpmError::Unexpected {
            what: "primary key",
            detail: "its public area is not the fixed ECC P-256 template the agent asked for"
                .into(),
        });
    }
    let mut r = Reader::new(&public[template.len()..], "ECC point");
    let x = r.tpm2b()?;
    let y = r.tpm2b()?;
    r.finish()?;
    if x.len() != 32 || y.len() != 32 {
        return Err(TpmError::Unexpected {
            what: "primary key",
            detail: format!("point coordinates of {} and {} bytes", x.len(), y.len()),
        });
    }
    let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
    p256::PublicKey::from_sec1_bytes(point.as_bytes()).map_err(|_| TpmError::Unexpected {
        what: "primary key",
        detail: "its point is not on the P-256 curve".into(),
    })
}

impl Tpm {
    /// TPM2_CreatePrimary in the owner hierarchy with the fixed salt-key template. The name is
    /// computed from the returned public area, compared with the TPM's, and with ReadPublic.
    pub fn create_salt_key(&mut self) -> Result<SaltKey, TpmError> {
        let template = salt_key_template();
        let mut w = Writer::new();
        w.u16(4).u16(0).u16(0); // inSensitive: empty userAuth and data
        let mut public = template.clone();
        public.extend_from_slice(&[0, 0, 0, 0]); // unique: empty x and y
        w.tpm2b(&public);
        w.tpm2b(&[]); // outsideInfo
        w.u32(0); // creationPCR: none
        let (handles, p) = self.execute(
            "CreatePrimary",
            0x131,
            &[(RH_OWNER, &RH_OWNER.to_be_bytes())],
            &mut [Auth::Password],
            &w.buf,
            1,
        )?;
        let handle = handles.first().copied().unwrap_or_default();
        let result = (|| {
            let mut r = Reader::new(&p, "CreatePrimary response");
            let out_public = r.tpm2b()?.to_vec();
            let _creation_data = r.tpm2b()?;
            let _creation_hash = r.tpm2b()?;
            let _tag = r.u16()?;
            let _hierarchy = r.u32()?;
            let _ticket = r.tpm2b()?;
            let name = r.tpm2b()?.to_vec();
            let public = parse_salt_public(&out_public)?;
            let computed = object_name(&out_public);
            if computed != name {
                return Err(TpmError::Unexpected {
                    what: "primary key name",
                    detail: "the name returned does not hash the public area returned".into(),
                });
            }
            let (rp_public, rp_name) = self.read_public(handle)?;
            if rp_public != out_public || rp_name != name {
                return Err(TpmError::Unexpected {
                    what: "primary key",
                    detail: "ReadPublic disagrees with CreatePrimary".into(),
                });
            }
            Ok(SaltKey {
                handle,
                name,
                public,
            })
        })();
        if result.is_err() {
            self.flush_quietly(handle);
        }
        result
    }

    /// TPM2_ReadPublic: (TPMT_PUBLIC bytes, name).
    pub fn read_public(&mut self, handle: u32) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let (_, p) = self.execute("ReadPublic", 0x173, &[(handle, &[])], &mut [], &[], 0)?;
        let mut r = Reader::new(&p, "ReadPublic response");
        let public = r.tpm2b()?.to_vec();
        let name = r.tpm2b()?.to_vec();
        Ok((public, name))
    }

    /// TPM2_PCR_Read of SHA-256 `pcrs` (ascending, at most 8).
    pub fn pcr_read(&mut self, pcrs: &[u32]) -> Result<Vec<[u8; 32]>, TpmError> {
        let sel = pcr_selection(pcrs);
        let (_, p) = self.execute("PCR_Read", 0x17E, &[], &mut [], &sel, 0)?;
        let mut r = Reader::new(&p, "PCR_Read response");
        let _counter = r.u32()?;
        let count = r.u32()?;
        let mut out_sel = Writer::new();
        out_sel.u32(count);
        for _ in 0..count.min(16) {
            let alg = r.u16()?;
            let n = r.u8()?;
            out_sel.u16(alg).u8(n).bytes(r.bytes(usize::from(n))?);
        }
        if out_sel.buf != sel {
            return Err(TpmError::Unexpected {
                what: "PCR selection",
                detail: format!(
                    "the TPM did not return SHA-256 PCRs {pcrs:?} (is the SHA-256 PCR bank allocated?)"
                ),
            });
        }
        let digests = r.u32()?;
        if digests as usize != pcrs.len() {
            return Err(TpmError::Unexpected {
                what: "PCR values",
                detail: format!("asked for {} values, got {digests}", pcrs.len()),
            });
        }
        let mut values = Vec::with_capacity(pcrs.len());
        for _ in 0..digests {
            let d = r.tpm2b()?;
            let v: [u8; 32] = d.try_into().map_err(|_| TpmError::Unexpected {
                what: "PCR value",
                detail: format!("{} bytes, expected 32", d.len()),
            })?;
            values.push(v);
        }
        Ok(values)
    }

    /// TPM2_PCR_Extend of the SHA-256 bank of `pcr` with `digest`.
    pub fn pcr_extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        let mut w = Writer::new();
        w.u32(1).u16(ALG_SHA256).bytes(digest);
        self.execute(
            "PCR_Extend",
            0x182,
            &[(pcr, &pcr.to_be_bytes())],
            &mut [Auth::Password],
            &w.buf,
            0,
        )
        .map(|_| ())
    }

    /// TPM2_NV_ReadPublic; the name is recomputed and checked. `Ok(None)` when not defined.
    pub fn nv_read_public(&mut self, index: u32) -> Result<Option<NvPublic>, TpmError> {
        let p = match self.execute("NV_ReadPublic", 0x169, &[(index, &[])], &mut [], &[], 0) {
            Ok((_, p)) => p,
            Err(e)
                if e.response_code()
                    .is_some_and(|rc| rc.is_fmt1(super::rc::FMT1_HANDLE)) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut r = Reader::new(&p, "NV_ReadPublic response");
        let mut pubr = Reader::new(r.tpm2b()?, "NV public area");
        let public = NvPublic::parse(&mut pubr)?;
        pubr.finish()?;
        let name = r.tpm2b()?.to_vec();
        if public.index != index || public.name() != name {
            return Err(TpmError::Unexpected {
                what: "NV public area",
                detail: "index or name does not match what was asked for".into(),
            });
        }
        Ok(Some(public))
    }

    /// TPM2_NV_DefineSpace in the owner hierarchy with an empty authValue.
    pub fn nv_define(&mut self, public: &NvPublic) -> Result<(), TpmError> {
        let mut w = Writer::new();
        w.tpm2b(&[]).tpm2b(&public.marshal());
        self.execute(
            "NV_DefineSpace",
            0x12A,
            &[(RH_OWNER, &RH_OWNER.to_be_bytes())],
            &mut [Auth::Password],
            &w.buf,
            0,
        )
        .map(|_| ())
    }

    /// TPM2_NV_Write authorized by the index itself through a satisfied policy `session`
    /// (TPMA_NV_POLICYWRITE), with the data parameter-encrypted so it never crosses the bus in
    /// clear.
    pub fn nv_write_encrypted(
        &mut self,
        public: &NvPublic,
        session: &mut Session,
        data: &[u8],
    ) -> Result<(), TpmError> {
        let mut w = Writer::with_capacity(data.len() + 4);
        w.tpm2b(data).u16(0);
        let params = Zeroizing::new(w.into_inner());
        let name = public.name();
        self.execute(
            "NV_Write",
            0x137,
            &[(public.index, &name), (public.index, &name)],
            &mut [Auth::Session {
                session,
                attributes: super::client::ATTR_CONTINUE | super::client::ATTR_DECRYPT,
            }],
            &params,
            0,
        )
        .map(|_| ())
    }

    /// TPM2_NV_WriteLock authorized by the index through a satisfied policy `session` (with
    /// TPMA_NV_WRITEDEFINE: locked until the index is deleted).
    pub fn nv_write_lock(
        &mut self,
        public: &NvPublic,
        session: &mut Session,
    ) -> Result<(), TpmError> {
        let name = public.name();
        self.execute(
            "NV_WriteLock",
            0x138,
            &[(public.index, &name), (public.index, &name)],
            &mut [Auth::Session {
                session,
                attributes: super::client::ATTR_CONTINUE,
            }],
            &[],
            0,
        )
        .map(|_| ())
    }

    /// TPM2_NV_Read through a satisfied policy `session`, response parameter encrypted.
    pub fn nv_read_encrypted(
        &mut self,
        public: &NvPublic,
        session: &mut Session,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let name = public.name();
        let mut w = Writer::new();
        w.u16(public.data_size).u16(0);
        let (_, p) = self.execute(
            "NV_Read",
            0x14E,
            &[(public.index, &name), (public.index, &name)],
            &mut [Auth::Session {
                session,
                attributes: super::client::ATTR_CONTINUE | super::client::ATTR_ENCRYPT,
            }],
            &w.buf,
            0,
        )?;
        let mut r = Reader::new(&p, "NV_Read response");
        let data = Zeroizing::new(r.tpm2b()?.to_vec());
        r.finish()?;
        Ok(data)
    }

    /// TPM2_PolicyPCR with an empty pcrDigest: the TPM takes its current PCR values.
    pub fn policy_pcr(&mut self, session: &Session, pcrs: &[u32]) -> Result<(), TpmError> {
        let mut w = Writer::new();
        w.tpm2b(&[]).bytes(&pcr_selection(pcrs));
        self.execute(
            "PolicyPCR",
            0x17F,
            &[(session.handle, &[])],
            &mut [],
            &w.buf,
            0,
        )
        .map(|_| ())
    }

    pub fn policy_get_digest(&mut self, session: &Session) -> Result<Vec<u8>, TpmError> {
        let (_, p) = self.execute(
            "PolicyGetDigest",
            0x189,
            &[(session.handle, &[])],
            &mut [],
            &[],
            0,
        )?;
        let mut r = Reader::new(&p, "PolicyGetDigest response");
        Ok(r.tpm2b()?.to_vec())
    }
}

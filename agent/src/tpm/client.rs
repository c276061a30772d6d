//! The TPM client: command execution with password, HMAC and policy sessions, response HMAC
//! verification and AES-128-CFB parameter encryption (TPM 2.0 Part 1, 19 and 21).

use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::crypto::{cfb_decrypt, cfb_encrypt, hmac_sha256, kdfa, kdfe, mac_eq, sha256};
use super::error::TpmError;
use super::rc;
use super::transport::Transport;
use super::wire::{TAG_NO_SESSIONS, TAG_SESSIONS, Writer, parse_response};

/// Password authorization pseudo-session.
pub const RS_PW: u32 = 0x4000_0009;
pub const RH_OWNER: u32 = 0x4000_0001;
pub const RH_NULL: u32 = 0x4000_0007;

pub const ATTR_CONTINUE: u8 = 0x01;
pub const ATTR_DECRYPT: u8 = 0x20;
pub const ATTR_ENCRYPT: u8 = 0x40;

const NONCE_LEN: usize = 32;

/// A started HMAC or policy session, salted to the primary key.
pub struct Session {
    pub handle: u32,
    key: Zeroizing<Vec<u8>>,
    nonce_tpm: Vec<u8>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session(0x{:08X}, key redacted)", self.handle)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Hmac = 0x00,
    Policy = 0x01,
}

/// How one handle of a command is authorized. Authorization values are always empty here: the
/// agent's NV index is read through a PCR policy and the owner hierarchy has no password on the
/// machines it runs on.
pub enum Auth<'a> {
    Password,
    Session {
        session: &'a mut Session,
        attributes: u8,
    },
}

/// The salt key: a primary ECC P-256 key created from the owner seed with a fixed template.
#[derive(Debug, Clone)]
pub struct SaltKey {
    pub handle: u32,
    pub name: Vec<u8>,
    pub public: p256::PublicKey,
}

pub struct Tpm {
    transport: Box<dyn Transport>,
}

impl Tpm {
    pub fn new(transport: Box<dyn Transport>) -> Self {
        Self { transport }
    }

    pub fn address(&self) -> String {
        self.transport.address()
    }

    pub fn is_simulator(&self) -> bool {
        self.transport.is_simulator()
    }

    /// Sends a command and returns (response handles, response parameters, plaintext).
    ///
    /// `handles` are (handle, name) pairs; names enter the cpHash. `auths` has one entry per
    /// handle that needs authorization (or an extra session). The first parameter, when a session
    /// asks for it, is encrypted on the way in (decrypt) or decrypted on the way out (encrypt).
    pub fn execute(
        &mut self,
        command: &'static str,
        cc: u32,
        handles: &[(u32, &[u8])],
        auths: &mut [Auth<'_>],
        params: &[u8],
        response_handles: usize,
    ) -> Result<(Vec<u32>, Zeroizing<Vec<u8>>), TpmError> {
        let mut params = Zeroizing::new(params.to_vec());
        let mut nonces_caller: Vec<Vec<u8>> = Vec::with_capacity(auths.len());
        for auth in auths.iter_mut() {
            if let Auth::Session {
                session,
                attributes,
            } = auth
            {
                let mut nonce = vec![0u8; NONCE_LEN];
                OsRng.fill_bytes(&mut nonce);
                if *attributes & ATTR_DECRYPT != 0 {
                    encrypt_first_param(&mut params, |data| {
                        cfb_encrypt(&session.key, &nonce, &session.nonce_tpm, data)
                    })?;
                }
                nonces_caller.push(nonce);
            } else {
                nonces_caller.push(Vec::new());
            }
        }

        let mut cp = Writer::new();
        cp.u32(cc);
        for (_, name) in handles {
            cp.bytes(name);
        }
        let cp_hash = sha256(&[&cp.buf, &params]);

        let mut area = Writer::new();
        for (auth, nonce) in auths.iter().zip(&nonces_caller) {
            match auth {
                Auth::Password => {
                    area.u32(RS_PW).tpm2b(&[]).u8(ATTR_CONTINUE).tpm2b(&[]);
                }
                Auth::Session {
                    session,
                    attributes,
                } => {
                    let hmac = hmac_sha256(
                        &session.key,
                        &[&cp_hash, nonce, &session.nonce_tpm, &[*attributes]],
                    );
                    area.u32(session.handle)
                        .tpm2b(nonce)
                        .u8(*attributes)
                        .tpm2b(&hmac);
                }
            }
        }

        let tag = if auths.is_empty() {
            TAG_NO_SESSIONS
        } else {
            TAG_SESSIONS
        };
        let mut body = Writer::new();
        for (h, _) in handles {
            body.u32(*h);
        }
        if !auths.is_empty() {
            body.u32(area.buf.len() as u32).bytes(&area.buf);
        }
        let total = 10 + body.buf.len() + params.len();
        let mut cmd = Zeroizing::new(Vec::with_capacity(total));
        cmd.extend_from_slice(&tag.to_be_bytes());
        cmd.extend_from_slice(&(total as u32).to_be_bytes());
        cmd.extend_from_slice(&cc.to_be_bytes());
        cmd.extend_from_slice(&body.buf);
        cmd.extend_from_slice(&params);

        let raw = Zeroizing::new(self.transport.transact(&cmd)?);
        let resp = parse_response(&raw, response_handles, auths.len()).map_err(|e| match e {
            TpmError::Tpm(rc) => TpmError::Rejected { command, rc },
            other => other,
        })?;

        let rp_hash = sha256(&[&0u32.to_be_bytes(), &cc.to_be_bytes(), &resp.parameters]);
        let mut out = Zeroizing::new(resp.parameters.clone());
        for ((auth, reply), nonce_caller) in auths.iter_mut().zip(&resp.auths).zip(&nonces_caller) {
            match auth {
                Auth::Password => {
                    if !reply.nonce.is_empty() || !reply.hmac.is_empty() {
                        return Err(TpmError::Malformed {
                            what: "password session reply",
                            detail: "non-empty nonce or HMAC".into(),
                        });
                    }
                }
                Auth::Session {
                    session,
                    attributes,
                } => {
                    let expected = hmac_sha256(
                        &session.key,
                        &[&rp_hash, &reply.nonce, nonce_caller, &[reply.attributes]],
                    );
                    if !mac_eq(&expected, &reply.hmac) {
                        return Err(TpmError::ResponseHmac { command });
                    }
                    session.nonce_tpm = reply.nonce.clone();
                    if *attributes & ATTR_ENCRYPT != 0 {
                        encrypt_first_param(&mut out, |data| {
                            cfb_decrypt(&session.key, &session.nonce_tpm, nonce_caller, data)
                        })?;
                    }
                }
            }
        }
        Ok((resp.handles, out))
    }

    /// TPM2_Startup(CLEAR) on a simulator after a (simulated) reset; "already started" is fine.
    pub fn startup(&mut self) -> Result<(), TpmError> {
        match self.execute("Startup", 0x144, &[], &mut [], &0u16.to_be_bytes(), 0) {
            Ok(_) => Ok(()),
            Err(e) if e.response_code().map(|r| r.0) == Some(rc::RC_INITIALIZE) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn get_random(&mut self, n: u16) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let (_, p) = self.execute("GetRandom", 0x17B, &[], &mut [], &n.to_be_bytes(), 0)?;
        let mut r = super::wire::Reader::new(&p, "GetRandom response");
        let bytes = Zeroizing::new(r.tpm2b()?.to_vec());
        if bytes.len() != usize::from(n) {
            return Err(TpmError::Unexpected {
                what: "random buffer",
                detail: format!("asked for {n} bytes, got {}", bytes.len()),
            });
        }
        Ok(bytes)
    }

    pub fn flush(&mut self, handle: u32) -> Result<(), TpmError> {
        self.execute(
            "FlushContext",
            0x165,
            &[],
            &mut [],
            &handle.to_be_bytes(),
            0,
        )
        .map(|_| ())
    }

    /// Flushes, logging (not returning) a failure: used on paths that already carry a result.
    pub fn flush_quietly(&mut self, handle: u32) {
        if let Err(e) = self.flush(handle) {
            tracing::warn!(handle = format!("0x{handle:08X}"), error = %e, "could not flush a TPM handle");
        }
    }

    /// Starts a session salted with `salt_key` (ECDH, KDFe "SECRET"), AES-128-CFB, SHA-256.
    pub fn start_session(
        &mut self,
        salt_key: &SaltKey,
        kind: SessionKind,
    ) -> Result<Session, TpmError> {
        let mut nonce_caller = vec![0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce_caller);
        let ephemeral = p256::ecdh::EphemeralSecret::random(&mut OsRng);
        let eph_pub = ephemeral.public_key().to_encoded_point(false);
        let tpm_pub = salt_key.public.to_encoded_point(false);
        let (Some(ex), Some(ey), Some(tx)) = (eph_pub.x(), eph_pub.y(), tpm_pub.x()) else {
            return Err(TpmError::Unexpected {
                what: "salt key point",
                detail: "point at infinity".into(),
            });
        };
        let shared = ephemeral.diffie_hellman(&salt_key.public);
        let salt = kdfe(shared.raw_secret_bytes(), "SECRET", ex, tx, 256);
        let mut point = Writer::new();
        point.tpm2b(ex).tpm2b(ey);
        let mut w = Writer::new();
        w.tpm2b(&nonce_caller)
            .tpm2b(&point.buf)
            .u8(kind as u8)
            .u16(0x0006) // TPM_ALG_AES
            .u16(128)
            .u16(0x0043) // TPM_ALG_CFB
            .u16(super::policy::ALG_SHA256);
        let (handles, p) = self.execute(
            "StartAuthSession",
            0x176,
            &[
                (salt_key.handle, &salt_key.name),
                (RH_NULL, &RH_NULL.to_be_bytes()),
            ],
            &mut [],
            &w.buf,
            1,
        )?;
        let Some(&handle) = handles.first() else {
            return Err(TpmError::Malformed {
                what: "StartAuthSession response",
                detail: "no session handle".into(),
            });
        };
        // From here on the TPM holds a session: flush it if the rest of the answer is unusable.
        let nonce_tpm = match parse_nonce(&p) {
            Ok(n) => n,
            Err(e) => {
                self.flush_quietly(handle);
                return Err(e);
            }
        };
        let key = kdfa(&salt, "ATH", &nonce_tpm, &nonce_caller, 256);
        Ok(Session {
            handle,
            key,
            nonce_tpm,
        })
    }
}

/// The nonceTPM of a StartAuthSession answer: a SHA-256-sized TPM2B and nothing after it.
fn parse_nonce(parameters: &[u8]) -> Result<Vec<u8>, TpmError> {
    let mut r = super::wire::Reader::new(parameters, "StartAuthSession response");
    let nonce = r.tpm2b()?.to_vec();
    r.finish()?;
    if nonce.len() != NONCE_LEN {
        return Err(TpmError::Malformed {
            what: "StartAuthSession response",
            detail: format!("nonceTPM of {} bytes, expected {NONCE_LEN}", nonce.len()),
        });
    }
    Ok(nonce)
}

/// Applies `f` to the data of the first parameter, which must be a TPM2B.
fn encrypt_first_param(params: &mut [u8], f: impl FnOnce(&mut [u8])) -> Result<(), TpmError> {
    if params.len() < 2 {
        return Err(TpmError::Malformed {
            what: "parameters",
            detail: "no first parameter to encrypt".into(),
        });
    }
    let n = usize::from(u16::from_be_bytes([params[0], params[1]]));
    let data = params.get_mut(2..2 + n).ok_or(TpmError::Malformed {
        what: "parameters",
        detail: "first parameter shorter than its size".into(),
    })?;
    f(data);
    Ok(())
}

//! TPM 2.0 marshalling (big-endian, TPM2B size prefixes) and response framing checks.
//!
//! Our own marshalling rather than a generic crate: the agent needs a dozen commands and, for the
//! session HMACs and parameter encryption, the exact parameter bytes as they cross the wire
//! (cpHash/rpHash are computed over them, and the first TPM2B is encrypted in place).

use super::error::TpmError;
use super::rc::ResponseCode;

/// Command/response tag: no authorization sessions.
pub const TAG_NO_SESSIONS: u16 = 0x8001;
/// Command/response tag: an authorization area follows the handles.
pub const TAG_SESSIONS: u16 = 0x8002;
/// Largest response the agent accepts (the usual TPM maximum buffer).
pub const MAX_RESPONSE: usize = 4096;
/// Size of a command or response header (tag, size, code).
pub const HEADER_LEN: usize = 10;

/// Growable big-endian buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    /// For secret content: sized up front so that growing never leaves a copy in freed memory.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// A TPM2B: u16 size then the bytes. Callers never pass more than a TPM buffer holds.
    pub fn tpm2b(&mut self, v: &[u8]) -> &mut Self {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.buf.extend_from_slice(&v[..usize::from(len)]);
        self
    }
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Bounds-checked big-endian reader over a response.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or(TpmError::Malformed {
                what: self.what,
                detail: format!(
                    "needs {n} more bytes at offset {} but only {} remain",
                    self.pos,
                    self.data.len().saturating_sub(self.pos)
                ),
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, TpmError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, TpmError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, TpmError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        self.take(n)
    }
    pub fn tpm2b(&mut self) -> Result<&'a [u8], TpmError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }
    pub fn finish(&self) -> Result<(), TpmError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(TpmError::Malformed {
                what: self.what,
                detail: format!("{} unexpected trailing bytes", self.remaining()),
            })
        }
    }
}

/// One session's part of a response authorization area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAuth {
    pub nonce: Vec<u8>,
    pub attributes: u8,
    pub hmac: Vec<u8>,
}

/// A framed, successful response split into its areas (parameters still raw, as hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub handles: Vec<u32>,
    pub parameters: Vec<u8>,
    pub auths: Vec<ResponseAuth>,
}

/// Checks a raw response's header (tag, size against the bytes read, response code) and splits a
/// successful one into handles, parameters and session replies.
///
/// `handle_count` is how many handles the command returns; `session_count` how many sessions the
/// command carried (each must be answered). Never panics on any input.
pub fn parse_response(
    raw: &[u8],
    handle_count: usize,
    session_count: usize,
) -> Result<Response, TpmError> {
    if raw.len() < HEADER_LEN {
        return Err(TpmError::ShortResponse {
            got: raw.len(),
            expected: HEADER_LEN,
        });
    }
    let mut r = Reader::new(raw, "response header");
    let tag = r.u16()?;
    let size = r.u32()?;
    let code = r.u32()?;
    if tag != TAG_NO_SESSIONS && tag != TAG_SESSIONS {
        return Err(TpmError::BadTag(tag));
    }
    let size_usize = usize::try_from(size).unwrap_or(usize::MAX);
    if size_usize != raw.len() {
        if size_usize > raw.len() {
            return Err(TpmError::ShortResponse {
                got: raw.len(),
                expected: size_usize,
            });
        }
        return Err(TpmError::SizeMismatch {
            header: size,
            got: raw.len(),
        });
    }
    if code != 0 {
        if raw.len() != HEADER_LEN {
            return Err(TpmError::Malformed {
                what: "error response",
                detail: format!("an error response is 10 bytes, this one is {}", raw.len()),
            });
        }
        return Err(TpmError::Tpm(ResponseCode(code)));
    }
    let mut r = Reader::new(&raw[HEADER_LEN..], "response body");
    let mut handles = Vec::with_capacity(handle_count);
    for _ in 0..handle_count {
        handles.push(r.u32()?);
    }
    if tag == TAG_NO_SESSIONS {
        if session_count != 0 {
            return Err(TpmError::Malformed {
                what: "response",
                detail: format!(
                    "the command carried {session_count} session(s) but the response has none"
                ),
            });
        }
        let parameters = r.rest().to_vec();
        return Ok(Response {
            handles,
            parameters,
            auths: Vec::new(),
        });
    }
    let param_size = r.u32()?;
    let parameters = r
        .bytes(usize::try_from(param_size).unwrap_or(usize::MAX))?
        .to_vec();
    let mut auths = Vec::with_capacity(session_count);
    for _ in 0..session_count {
        let nonce = r.tpm2b()?.to_vec();
        let attributes = r.u8()?;
        let hmac = r.tpm2b()?.to_vec();
        auths.push(ResponseAuth {
            nonce,
            attributes,
            hmac,
        });
    }
    r.finish()?;
    Ok(Response {
        handles,
        parameters,
        auths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore};

    #[test]
    fn rejects_wrong_tag_size_and_short_reads() {
        let ok = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0];
        assert!(parse_response(&ok, 0, 0).is_ok());
        let bad_tag = [0x80, 0x03, 0, 0, 0, 10, 0, 0, 0, 0];
        assert!(matches!(
            parse_response(&bad_tag, 0, 0),
            Err(TpmError::BadTag(0x8003))
        ));
        let short = [0x80, 0x01, 0, 0, 0, 20, 0, 0, 0, 0];
        assert!(matches!(
            parse_response(&short, 0, 0),
            Err(TpmError::ShortResponse {
                got: 10,
                expected: 20
            })
        ));
        let long = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0, 1];
        assert!(matches!(
            parse_response(&long, 0, 0),
            Err(TpmError::SizeMismatch { .. })
        ));
        assert!(matches!(
            parse_response(&ok[..4], 0, 0),
            Err(TpmError::ShortResponse { .. })
        ));
    }

    /// The parser must never panic, whatever the TPM (or an interposer) sends.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::thread_rng();
        for i in 0..200_000u32 {
            let len = rng.gen_range(0..96);
            let mut buf = vec![0u8; len];
            rng.fill_bytes(&mut buf);
            // Make a good share of the inputs pass the header checks.
            if len >= 10 && i % 2 == 0 {
                buf[0] = 0x80;
                buf[1] = if i % 4 == 0 { 1 } else { 2 };
                buf[2..6].copy_from_slice(&(len as u32).to_be_bytes());
                buf[6..10].copy_from_slice(&[0, 0, 0, 0]);
            }
            let _ = parse_response(&buf, (i % 3) as usize, (i % 2) as usize);
        }
    }
}

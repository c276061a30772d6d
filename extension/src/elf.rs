//! Just enough ELF parsing to tell a static executable from a dynamic one.
//!
//! An extension service runs in a root filesystem that holds only what the extension ships, so
//! its entrypoint must not need a program interpreter or shared libraries. A binary is static
//! when it has no `PT_INTERP` segment and its dynamic section (static-pie binaries keep one for
//! self-relocation) lists no `DT_NEEDED` libraries.

/// What an entrypoint file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfKind {
    /// Not an ELF file at all (script, text, truncated file).
    NotElf(String),
    /// A statically linked executable (including static-pie).
    Static,
    /// Needs a program interpreter or shared libraries.
    Dynamic(String),
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    fn slice(&self, at: usize, len: usize) -> Option<&[u8]> {
        self.bytes.get(at..at.checked_add(len)?)
    }
    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.slice(at, 2)?.try_into().ok()?;
        Some(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.slice(at, 4)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let b: [u8; 8] = self.slice(at, 8)?.try_into().ok()?;
        Some(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
    /// A word: 4 bytes in ELF32, 8 in ELF64.
    fn word(&self, at: usize, wide: bool) -> Option<u64> {
        if wide {
            self.u64(at)
        } else {
            self.u32(at).map(u64::from)
        }
    }
}

/// Classifies `bytes` as a static executable, a dynamic one, or not an executable ELF.
pub fn classify(bytes: &[u8]) -> ElfKind {
    match inspect(bytes) {
        Ok(kind) => kind,
        Err(why) => ElfKind::NotElf(why.to_string()),
    }
}

fn inspect(bytes: &[u8]) -> Result<ElfKind, &'static str> {
    if bytes.len() < 16 || &bytes[..4] != b"\x7fELF" {
        return Err("no ELF magic (\\x7fELF) at the start of the file");
    }
    let wide = match bytes[4] {
        1 => false,
        2 => true,
        _ => return Err("unknown ELF class"),
    };
    let little = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("unknown ELF byte order"),
    };
    let r = Reader { bytes, little };
    let truncated = "ELF header or program headers are truncated";
    let e_type = r.u16(16).ok_or(truncated)?;
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err("ELF file is not an executable (e_type is neither EXEC nor DYN)");
    }
    let (phoff, phentsize_at, phnum_at) = if wide {
        (r.u64(32).ok_or(truncated)?, 54, 56)
    } else {
        (u64::from(r.u32(28).ok_or(truncated)?), 42, 44)
    };
    let phentsize = usize::from(r.u16(phentsize_at).ok_or(truncated)?);
    let phnum = usize::from(r.u16(phnum_at).ok_or(truncated)?);
    let phoff = usize::try_from(phoff).map_err(|_| truncated)?;
    let mut dynamic: Option<(usize, usize)> = None;
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(truncated)?)
            .ok_or(truncated)?;
        let p_type = r.u32(at).ok_or(truncated)?;
        // ELF64: p_type, p_flags, p_offset, ...; ELF32: p_type, p_offset, ..., p_filesz at 16.
        let (off_at, filesz_at) = if wide {
            (at + 8, at + 32)
        } else {
            (at + 4, at + 16)
        };
        let offset = r.word(off_at, wide).ok_or(truncated)?;
        let filesz = r.word(filesz_at, wide).ok_or(truncated)?;
        match p_type {
            PT_INTERP => {
                let interp = usize::try_from(offset)
                    .ok()
                    .zip(usize::try_from(filesz).ok())
                    .and_then(|(o, l)| r.slice(o, l))
                    .map(|s| {
                        String::from_utf8_lossy(s)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_else(|| "an unreadable interpreter path".to_string());
                return Ok(ElfKind::Dynamic(format!(
                    "has a program interpreter ({interp})"
                )));
            }
            PT_DYNAMIC => {
                let o = usize::try_from(offset).map_err(|_| truncated)?;
                let l = usize::try_from(filesz).map_err(|_| truncated)?;
                dynamic = Some((o, l));
            }
            _ => {}
        }
    }
    if let Some((offset, len)) = dynamic {
        let entry = if wide { 16 } else { 8 };
        let mut at = offset;
        while at + entry <= offset + len {
            let tag = r.word(at, wide).ok_or(truncated)?;
            if tag == DT_NULL {
                break;
            }
            if tag == DT_NEEDED {
                return Ok(ElfKind::Dynamic(
                    "needs shared libraries (DT_NEEDED)".to_string(),
                ));
            }
            at += entry;
        }
    }
    Ok(ElfKind::Static)
}

/// Minimal ELF64 little-endian executables for tests: `interp` adds a `PT_INTERP` segment,
/// `needed` a `PT_DYNAMIC` segment with one `DT_NEEDED` entry, `static_pie` an empty
/// `PT_DYNAMIC` segment (no `DT_NEEDED`), as static-pie binaries have.
#[doc(hidden)]
pub fn synthetic_elf(interp: bool, needed: bool, static_pie: bool) -> Vec<u8> {
    let mut segments: Vec<(u32, Vec<u8>)> = Vec::new();
    if interp {
        segments.push((PT_INTERP, b"/lib64/ld-linux-x86-64.so.2\0".to_vec()));
    }
    if needed || static_pie {
        let mut d = Vec::new();
        if needed {
            d.extend_from_slice(&DT_NEEDED.to_le_bytes());
            d.extend_from_slice(&1u64.to_le_bytes());
        }
        d.extend_from_slice(&DT_NULL.to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes());
        segments.push((PT_DYNAMIC, d));
    }
    let phoff = 64usize;
    let phentsize = 56usize;
    let mut data_at = phoff + phentsize * segments.len();
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&(if static_pie { ET_DYN } else { ET_EXEC }).to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&(phentsize as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    let mut payload = Vec::new();
    for (p_type, data) in &segments {
        let mut ph = vec![0u8; phentsize];
        ph[0..4].copy_from_slice(&p_type.to_le_bytes());
        ph[8..16].copy_from_slice(&(data_at as u64).to_le_bytes());
        ph[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(&ph);
        payload.extend_from_slice(data);
        data_at += data.len();
    }
    out.extend_from_slice(&payload);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classifies_synthetic_binaries() {
        assert_eq!(
            classify(&synthetic_elf(false, false, false)),
            ElfKind::Static
        );
        assert_eq!(
            classify(&synthetic_elf(false, false, true)),
            ElfKind::Static
        );
        assert!(
            matches!(classify(&synthetic_elf(true, false, false)), ElfKind::Dynamic(m) if m.contains("ld-linux"))
        );
        assert!(
            matches!(classify(&synthetic_elf(false, true, false)), ElfKind::Dynamic(m) if m.contains("DT_NEEDED"))
        );
        assert!(matches!(
            classify(b"#!/bin/sh\necho hi\n"),
            ElfKind::NotElf(_)
        ));
        assert!(
            matches!(classify(&synthetic_elf(false, false, false)[..20]), ElfKind::NotElf(m) if m.contains("truncated"))
        );
    }

    #[test]
    fn classifies_a_real_dynamic_binary() {
        // /bin/sh is dynamically linked on every distribution this builds on.
        let bytes = std::fs::read("/bin/sh").unwrap();
        assert!(matches!(classify(&bytes), ElfKind::Dynamic(_)));
    }
}

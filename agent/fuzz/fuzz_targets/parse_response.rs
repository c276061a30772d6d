//! Fuzzes the TPM response parser: whatever the TPM (or an interposer) sends, it must return an
//! error or a well-formed split, never panic. The first byte picks the expected handle and
//! session counts.
#![no_main]

use bootstrap_agent::tpm::rc::ResponseCode;
use bootstrap_agent::tpm::wire::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, raw)) = data.split_first() else {
        return;
    };
    let handles = usize::from(shape & 0x3);
    let sessions = usize::from((shape >> 2) & 0x3);
    match parse_response(raw, handles, sessions) {
        Ok(r) => {
            assert_eq!(r.handles.len(), handles);
            assert_eq!(
                r.auths.len(),
                if raw.get(1) == Some(&2) { sessions } else { 0 }
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if raw.len() >= 4 {
        let _ = ResponseCode(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]])).to_string();
    }
});

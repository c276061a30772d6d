//! TPM 2.0 client in pure Rust: transport, commands, sessions, PCR policy, the NV seed.

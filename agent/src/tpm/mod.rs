//! TPM 2.0 client in pure Rust: transport, commands, sessions, PCR policy, the NV seed.
//!
//! No C library: the agent is a static musl binary. Marshalling is our own (see [`wire`]),
//! sessions follow TPM 2.0 Part 1 (salted with a fixed-template primary ECC key, HMAC-checked
//! responses, AES-128-CFB parameter encryption), and every transient handle is flushed, on error
//! paths too, because swtpm has no resource manager.

pub mod client;
pub mod commands;
pub mod crypto;
pub mod error;
pub mod policy;
pub mod rc;
pub mod seed;
pub mod transport;
pub mod wire;

pub use client::Tpm;
pub use error::TpmError;

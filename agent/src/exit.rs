//! Process exit codes: a contract with Talos (`restart: untilSuccess`), scripts and tests.

/// Everything the agent had to do is done.
pub const SUCCESS: u8 = 0;
/// A transient failure: a retry (Talos restarts the service) may succeed.
pub const TRANSIENT: u8 = 1;
/// The configuration, or something it references, is wrong; fix it and the service restarts.
pub const CONFIG: u8 = 2;
/// A permanent failure that retrying will not fix (wrong TPM state, terminal Flux failure).
pub const PERMANENT: u8 = 3;

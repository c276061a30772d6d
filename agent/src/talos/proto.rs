//! Generated code for our wire-compatible subset of Talos's machine API (see `agent/proto/`).
//!
//! Client and server are both generated: the agent uses the clients, the test stand-in serves
//! the same definitions so both ends agree on every package, method and field number.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `google.rpc` (only `Status`, carried in `common.Metadata`).
pub mod google {
    /// `google.rpc.Status`.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// Talos package `common`: `Metadata`, `Data`.
pub mod common {
    include!(concat!(env!("OUT_DIR"), "/common.rs"));
}

/// Talos package `machine`: `MachineService` and its messages.
pub mod machine {
    include!(concat!(env!("OUT_DIR"), "/machine.rs"));
}

/// gRPC metadata key machined reads the caller's role from on its local socket.
pub const ROLE_METADATA_KEY: &str = "talos-role";
/// The role every call the agent makes needs.
pub const ROLE_ADMIN: &str = "os:admin";
/// Read-only role (allowed for `Version` and `ServiceList`).
pub const ROLE_READER: &str = "os:reader";
/// gRPC metadata key apid routes a request to a node with.
pub const NODE_METADATA_KEY: &str = "node";

//! Stand-ins and harnesses shared by the end-to-end tests.

pub mod envtest;
pub mod kubeapi;
pub mod node;
pub mod registry;
pub mod swtpm;
pub mod talos;

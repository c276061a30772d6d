//! Build-time tooling for the SecureBoot Talos image (nothing here ships inside the agent):
//!
//! - [`schematic`]: Image Factory schematics and their IDs, computed exactly as the factory does.
//! - [`client`]: the Image Factory HTTP API (`POST /schematics`, official extensions, URLs).
//! - [`profile`]: imager profiles for the SecureBoot ISO and installer with our extension.
//! - [`imager`]: the imager invocation, run with docker/podman when one works, printed otherwise.

pub mod client;
pub mod imager;
pub mod profile;
pub mod schematic;

/// Placeholder for the guest-agent image in the committed example profiles; `make image`
/// renders the real profile with the ref pinned from the Image Factory.
pub const GUEST_AGENT_PLACEHOLDER: &str =
    "ghcr.io/siderolabs/qemu-guest-agent:PINNED-AT-BUILD-TIME";

/// Name of the official guest-agent extension.
pub const GUEST_AGENT: &str = "siderolabs/qemu-guest-agent";

/// Header of the committed example profiles.
pub const PROFILE_HEADER: &str = "# Example imager profile, rendered by `image-factory profile`. `make image` renders the live\n# one with the qemu-guest-agent image pinned (ref@digest) from the Image Factory's list for the\n# Talos version, and feeds it to imager on stdin. Paths are inside the imager container.\n";

//! Builds and validates the bootstrap-agent Talos system extension image.

//! bootstrap-agent: brings a Talos node from a freshly flashed disk to a cluster that Flux
//! manages from Git, unattended.
//!
//! Data flows one way: configuration → plan → boot steps → status. See ARCHITECTURE.md.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod boot;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod duration;
pub mod error;
pub mod exit;
pub mod kube;
pub mod logging;
pub mod plan;
pub mod preflight;
pub mod seal;
pub mod secureboot;
pub mod status;
pub mod steps;
pub mod talos;
pub mod tpm;

#[cfg(test)]
mod layering;

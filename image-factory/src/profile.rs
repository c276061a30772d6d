//! Imager profiles for the SecureBoot ISO and installer with our extension.
//!
//! Field names follow Talos's `pkg/imager/profile` (arch, platform, secureboot, version,
//! customization, input, output). Paths are inside the imager container, where
//! [`crate::imager`] mounts the keys at `/secureboot`, our OCI layout at `/extension` and the
//! output directory at `/out`.

use serde::Serialize;

/// Default Talos version the images are built for: `talos` in `image-factory/versions.yaml`, the
/// repository's one source of versions (read by `build.rs`).
pub const DEFAULT_TALOS_VERSION: &str = env!("PINNED_TALOS_VERSION");
/// Where imager finds our extension's OCI layout.
pub const EXTENSION_MOUNT: &str = "/extension";
/// Where imager finds the SecureBoot keys (`talosctl gen secureboot ...` output).
pub const KEYS_MOUNT: &str = "/secureboot";

/// Which artefact to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Bootable ISO; enrolls our SecureBoot keys on first boot when the firmware is in setup mode.
    Iso,
    /// Installer container image (tar) for `talosctl upgrade` / the machine config's install image.
    Installer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Iso => "secureboot-iso",
            Kind::Installer => "secureboot-installer",
        }
    }
}

/// Inputs for a profile.
#[derive(Debug, Clone)]
pub struct ProfileInputs {
    pub kind: Kind,
    pub talos_version: String,
    /// Pinned qemu-guest-agent image (`ghcr.io/siderolabs/qemu-guest-agent:TAG@sha256:...`).
    pub guest_agent_ref: String,
    /// Machine configuration to embed (Talos 1.12+). Holds cluster secrets.
    pub embedded_config: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Profile<'a> {
    arch: &'a str,
    platform: &'a str,
    secureboot: bool,
    version: &'a str,
    #[serde(skip_serializing_if = "Customization::is_empty")]
    customization: Customization<'a>,
    input: Input<'a>,
    output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Customization<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    embedded_machine_configuration: Option<&'a str>,
}

impl Customization<'_> {
    fn is_empty(&self) -> bool {
        self.embedded_machine_configuration.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Input<'a> {
    secureboot: SecureBootAssets,
    system_extensions: Vec<ContainerAsset<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecureBootAssets {
    secure_boot_signer: KeyAndCert,
    pcr_signer: Key,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform_key_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_exchange_key_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature_key_path: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyAndCert {
    key_path: String,
    cert_path: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    key_path: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContainerAsset<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    image_ref: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oci_path: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    kind: &'static str,
    out_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    iso_options: Option<IsoOptions>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IsoOptions {
    sd_boot_enroll_keys: &'static str,
}

/// Renders the imager profile YAML (fed to `imager -` on stdin).
pub fn render(inputs: &ProfileInputs) -> Result<String, serde_saphyr::ser::Error> {
    let key = |name: &str| format!("{KEYS_MOUNT}/{name}");
    let iso = inputs.kind == Kind::Iso;
    let profile = Profile {
        arch: "amd64",
        platform: "metal",
        secureboot: true,
        version: &inputs.talos_version,
        customization: Customization {
            embedded_machine_configuration: inputs.embedded_config.as_deref(),
        },
        input: Input {
            secureboot: SecureBootAssets {
                secure_boot_signer: KeyAndCert {
                    key_path: key("uki-signing-key.pem"),
                    cert_path: key("uki-signing-cert.pem"),
                },
                pcr_signer: Key {
                    key_path: key("pcr-signing-key.pem"),
                },
                // The ISO carries the .auth files so systemd-boot can enroll them (PK last).
                platform_key_path: iso.then(|| key("PK.auth")),
                key_exchange_key_path: iso.then(|| key("KEK.auth")),
                signature_key_path: iso.then(|| key("db.auth")),
            },
            system_extensions: vec![
                ContainerAsset {
                    image_ref: None,
                    oci_path: Some(EXTENSION_MOUNT),
                },
                ContainerAsset {
                    image_ref: Some(&inputs.guest_agent_ref),
                    oci_path: None,
                },
            ],
        },
        output: Output {
            kind: if iso { "iso" } else { "installer" },
            out_format: "raw",
            iso_options: iso.then_some(IsoOptions {
                sd_boot_enroll_keys: "if-safe",
            }),
        },
    };
    serde_saphyr::to_string(&profile)
}

//! Image Factory schematics and their IDs.
//!
//! The factory's ID is the hex SHA-256 of the schematic marshalled by Go's YAML library: keys in
//! struct field order, empty fields omitted (`customization` always present, `{}` when empty),
//! 4-space indentation, sequences indented under their key. serde-saphyr can indent by 4 but
//! quotes strings by different rules than Go's emitter, and a single differing byte changes
//! the ID, so this module emits that fixed, small shape itself.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A schematic (field order matters: it is the factory's struct order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schematic {
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub overlay: Overlay,
    #[serde(default)]
    pub customization: Customization,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub name: String,
    /// Scalar options only (string values).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Customization {
    /// Machine configuration baked into the image: holds cluster secrets, never send it to a
    /// public factory.
    #[serde(default)]
    pub embedded_machine_configuration: String,
    #[serde(default)]
    pub extra_kernel_args: Vec<String>,
    #[serde(default)]
    pub meta: Vec<MetaValue>,
    #[serde(default)]
    pub system_extensions: SystemExtensions,
    #[serde(default)]
    pub bootloader: String,
    #[serde(default)]
    pub secureboot: SecureBoot,
    #[serde(default)]
    pub disk_image: DiskImage,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaValue {
    pub key: u8,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SystemExtensions {
    #[serde(default)]
    pub official_extensions: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecureBoot {
    #[serde(default)]
    pub enroll_keys: String,
    #[serde(default)]
    pub include_well_known_certificates: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiskImage {
    #[serde(default)]
    pub sector_size: u32,
}

/// A schematic file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "schematic is not valid: {0} (fields: owner, overlay{{image,name,options}}, customization{{embeddedMachineConfiguration, extraKernelArgs, meta, systemExtensions{{officialExtensions}}, bootloader, secureboot{{enrollKeys, includeWellKnownCertificates}}, diskImage{{sectorSize}}}})"
)]
pub struct ParseError(String);

impl Schematic {
    /// Parses schematic YAML (any formatting; unknown fields are refused, as the factory does).
    pub fn parse(text: &str) -> Result<Schematic, ParseError> {
        if text.trim().is_empty() {
            return Ok(Schematic::default());
        }
        serde_saphyr::from_str(text).map_err(|e| ParseError(e.to_string()))
    }

    /// A schematic holding only official extensions.
    pub fn with_official_extensions(names: &[&str]) -> Schematic {
        let mut s = Schematic::default();
        s.customization.system_extensions.official_extensions =
            names.iter().map(|n| n.to_string()).collect();
        s
    }

    /// The canonical YAML the factory hashes.
    pub fn canonical_yaml(&self) -> String {
        let mut e = Emitter::default();
        if !self.owner.is_empty() {
            e.scalar_field(0, "owner", &self.owner);
        }
        let o = &self.overlay;
        if !(o.image.is_empty() && o.name.is_empty() && o.options.is_empty()) {
            e.key(0, "overlay");
            e.scalar_field(4, "image", &o.image);
            e.scalar_field(4, "name", &o.name);
            if !o.options.is_empty() {
                e.key(4, "options");
                for (k, v) in &o.options {
                    e.scalar_field(8, k, v);
                }
            }
        }
        let c = &self.customization;
        if *c == Customization::default() {
            e.line(0, "customization: {}");
            return e.out;
        }
        e.key(0, "customization");
        if !c.embedded_machine_configuration.is_empty() {
            e.scalar_field(
                4,
                "embeddedMachineConfiguration",
                &c.embedded_machine_configuration,
            );
        }
        e.string_list(4, "extraKernelArgs", &c.extra_kernel_args);
        if !c.meta.is_empty() {
            e.key(4, "meta");
            for m in &c.meta {
                e.line(8, &format!("- key: {}", m.key));
                e.scalar_field(10, "value", &m.value);
            }
        }
        if !c.system_extensions.official_extensions.is_empty() {
            e.key(4, "systemExtensions");
            e.string_list(
                8,
                "officialExtensions",
                &c.system_extensions.official_extensions,
            );
        }
        if !c.bootloader.is_empty() {
            e.scalar_field(4, "bootloader", &c.bootloader);
        }
        if c.secureboot != SecureBoot::default() {
            e.key(4, "secureboot");
            if !c.secureboot.enroll_keys.is_empty() {
                e.scalar_field(8, "enrollKeys", &c.secureboot.enroll_keys);
            }
            if c.secureboot.include_well_known_certificates {
                e.line(8, "includeWellKnownCertificates: true");
            }
        }
        if c.disk_image.sector_size != 0 {
            e.key(4, "diskImage");
            e.line(8, &format!("sectorSize: {}", c.disk_image.sector_size));
        }
        e.out
    }

    /// The schematic ID: hex SHA-256 of [`Schematic::canonical_yaml`].
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_yaml().as_bytes()))
    }

    /// True when the schematic embeds a machine configuration (secrets).
    pub fn holds_secrets(&self) -> bool {
        !self.customization.embedded_machine_configuration.is_empty()
    }
}

#[derive(Default)]
struct Emitter {
    out: String,
}

impl Emitter {
    fn line(&mut self, indent: usize, text: &str) {
        self.out.push_str(&" ".repeat(indent));
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn key(&mut self, indent: usize, key: &str) {
        self.line(indent, &format!("{key}:"));
    }

    fn scalar_field(&mut self, indent: usize, key: &str, value: &str) {
        match literal_block(value) {
            Some((header, lines)) => {
                self.line(indent, &format!("{}: {header}", scalar(key)));
                for l in lines {
                    if l.is_empty() {
                        self.out.push('\n');
                    } else {
                        self.line(indent + 4, l);
                    }
                }
            }
            None => self.line(indent, &format!("{}: {}", scalar(key), scalar(value))),
        }
    }

    fn string_list(&mut self, indent: usize, key: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.key(indent, key);
        for item in items {
            self.line(indent + 4, &format!("- {}", scalar(item)));
        }
    }
}

/// Multi-line strings go out as literal blocks (`|`, `|-`, `|+` by trailing newlines), as
/// Go's emitter does when the text allows it.
fn literal_block(value: &str) -> Option<(&'static str, Vec<&str>)> {
    if !value.contains('\n') || value.starts_with(' ') || value.starts_with('\n') {
        return None;
    }
    if value
        .lines()
        .any(|l| l.ends_with(' ') || l.contains('\t') || l.contains('\r'))
    {
        return None;
    }
    let trailing = value.len() - value.trim_end_matches('\n').len();
    let header = match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    };
    let body = value.trim_end_matches('\n');
    let mut lines: Vec<&str> = body.split('\n').collect();
    lines.extend(std::iter::repeat_n("", trailing.saturating_sub(1)));
    Some((header, lines))
}

/// A string scalar the way Go's YAML emitter writes it: plain when it reads back as the same
/// string, double-quoted when plain would read as another type (bool, number, null), single
/// quoted when plain would be malformed.
fn scalar(s: &str) -> String {
    if s.is_empty() || resolves_to_non_string(s) || s.chars().any(|c| c.is_control()) {
        return double_quoted(s);
    }
    if plain_allowed(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "y", "Y",
        "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "+.inf", "-.inf", ".nan", ".NaN", ".NAN",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let t = s.strip_prefix(['+', '-']).unwrap_or(s).replace('_', "");
    let number = |t: &str| {
        !t.is_empty()
            && (t.bytes().all(|b| b.is_ascii_digit())
                || t.strip_prefix("0x")
                    .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
                || t.strip_prefix("0o").is_some_and(|o| {
                    !o.is_empty() && o.bytes().all(|b| (b'0'..=b'7').contains(&b))
                })
                || t.strip_prefix("0b")
                    .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b == b'0' || b == b'1')))
    };
    if number(&t) || t.parse::<f64>().is_ok() && t.bytes().any(|b| b.is_ascii_digit()) {
        return true;
    }
    // Base-60 numbers (YAML 1.1), e.g. 190:20:30, which Go's encoder quotes.
    let parts: Vec<&str> = t.split(':').collect();
    parts.len() > 1
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn plain_allowed(s: &str) -> bool {
    let first = s.chars().next().unwrap_or(' ');
    if "#,[]{}&*!|>'\"%@`".contains(first) {
        return false;
    }
    if matches!(first, '-' | '?' | ':') && s[1..].chars().next().is_none_or(|c| c == ' ') {
        return false;
    }
    if s.starts_with(' ') || s.ends_with(' ') || s.ends_with(':') {
        return false;
    }
    !(s.contains(": ") || s.contains(" #"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_go_yaml_rules() {
        assert_eq!(
            scalar("siderolabs/qemu-guest-agent"),
            "siderolabs/qemu-guest-agent"
        );
        assert_eq!(scalar("console=ttyS0"), "console=ttyS0");
        assert_eq!(scalar("true"), "\"true\"");
        assert_eq!(scalar("1.5"), "\"1.5\"");
        assert_eq!(scalar("10"), "\"10\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar("a: b"), "'a: b'");
        assert_eq!(scalar("-x"), "-x");
        assert_eq!(scalar("- x"), "'- x'");
    }

    #[test]
    fn literal_blocks_keep_trailing_newlines() {
        let s = Schematic {
            customization: Customization {
                embedded_machine_configuration:
                    "version: v1alpha1\nmachine:\n  type: controlplane\n".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            s.canonical_yaml(),
            "customization:\n    embeddedMachineConfiguration: |\n        version: v1alpha1\n        machine:\n          type: controlplane\n"
        );
        assert!(s.holds_secrets());
    }
}

//! Reads the pinned Talos version from `versions.yaml` (the repository's one source of versions)
//! into `PINNED_TALOS_VERSION`, the default `--talos-version` of every subcommand.

use std::path::Path;

fn main() {
    let path = Path::new("versions.yaml");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => panic!("image-factory/{}: {e}", path.display()),
    };
    // One `key: value` per line (the Makefile reads the file the same way).
    let talos = text
        .lines()
        .filter_map(|line| line.strip_prefix("talos:"))
        .map(str::trim)
        .collect::<Vec<_>>();
    match talos.as_slice() {
        [v] if is_release(v) => println!("cargo:rustc-env=PINNED_TALOS_VERSION={v}"),
        [v] => panic!(
            "image-factory/versions.yaml: talos is `{v}`; pin a released version vMAJOR.MINOR.PATCH"
        ),
        _ => panic!(
            "image-factory/versions.yaml: expected exactly one `talos: vX.Y.Z` line, found {}",
            talos.len()
        ),
    }
}

/// `vMAJOR.MINOR.PATCH`, nothing else (no pre-release, no build metadata).
fn is_release(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

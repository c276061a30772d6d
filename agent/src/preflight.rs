//! The checks `run` and `plan` both make before anything touches the network or the TPM: what
//! the configuration references exists on this machine (the kubeconfig, sealed files, the bundle
//! directory), the bundle verifies against its pins, and every sealed input is valid age armor.
//! A run that passes them reads the same bundle the plan printed.

use crate::bundle::{Bundle, BundleLock, LOCK_FILE};
use crate::config::{Config, Problem};
use crate::error::Classify;
use crate::steps::{ClusterAccess, SealedSource};

/// What the checks found.
#[derive(Debug)]
pub struct Preflight {
    /// Everything wrong, each naming its field and the fix.
    pub problems: Vec<Problem>,
    /// The embedded bundle, read and verified (`None` in fetch mode, or when it is broken).
    pub bundle: Option<Bundle>,
}

/// Checks `config` against this machine.
pub fn check(config: &Config) -> Preflight {
    let settings = &config.steps;
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String, fix: String| {
        problems.push(Problem {
            field,
            line: None,
            message,
            fix,
        });
    };
    if let ClusterAccess::Kubeconfig { path } = &settings.cluster
        && !path.is_file()
    {
        problem(
            "kubernetes.kubeconfig".into(),
            format!("{} does not exist or is not a file", path.display()),
            "point it at a readable kubeconfig".into(),
        );
    }
    for (i, secret) in settings.secrets.iter().enumerate() {
        let field = match &secret.sealed {
            None => continue,
            Some(SealedSource::Inline(_)) => format!("secrets[{i}].sealed"),
            Some(SealedSource::File(file)) if !file.is_file() => {
                problem(
                    format!("secrets[{i}].sealedFile"),
                    format!("{} does not exist or is not a file", file.display()),
                    format!(
                        "write the age file sealed to this TPM there, or use `sealed:` inline for {}",
                        secret.label()
                    ),
                );
                continue;
            }
            Some(SealedSource::File(_)) => format!("secrets[{i}].sealedFile"),
        };
        let armor = match secret.read_sealed() {
            Ok(Some(armor)) => armor,
            Ok(None) => continue,
            Err(e) => {
                problem(field, e, "make the file readable by the agent".into());
                continue;
            }
        };
        if let Err(e) = std::io::Read::read_to_end(
            &mut age::armor::ArmoredReader::new(armor.as_bytes()),
            &mut Vec::new(),
        ) {
            problem(
                field,
                format!(
                    "the sealed input of {} is not valid age armor: {e}",
                    secret.label()
                ),
                "paste the whole output of `age -a -r <recipient>`, BEGIN and END lines included"
                    .into(),
            );
        }
    }
    let dir = &settings.bundle.dir;
    let mut bundle = None;
    if !dir.is_dir() {
        problem(
            "bundle.dir".into(),
            format!("{} does not exist or is not a directory", dir.display()),
            "use the directory the extension image embeds, or build the extension with a bundle"
                .into(),
        );
    } else {
        let loaded = if settings.bundle.fetch {
            BundleLock::load(&dir.join(LOCK_FILE)).map(|_| None)
        } else {
            Bundle::load_dir(dir).map(Some)
        };
        match loaded {
            Ok(b) => bundle = b,
            Err(e) => problem("bundle".into(), e.to_string(), e.hint().unwrap_or_default()),
        }
    }
    Preflight { problems, bundle }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn references_that_do_not_exist_are_reported_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "kubernetes: {{ kubeconfig: missing.yaml }}\nflux: {{ url: https://e.org/o/r }}\ntpm: {{ factor: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff, recipient: age1ypdhz4d9jcynk52crgnzq6kq9mdppdqvhfdaq49xktyendswgvjqgs8qye }}\nbundle: {{ dir: {} }}\nsecrets: [ {{ name: s, key: k, sealedFile: nope.age }} ]\n",
            dir.path().join("no-bundle").display()
        );
        let c = Config::parse(&text, &dir.path().join("c.yaml"), &|_| None).unwrap();
        let found = check(&c);
        let fields: Vec<&str> = found.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "kubernetes.kubeconfig",
                "secrets[0].sealedFile",
                "bundle.dir"
            ],
            "{:?}",
            found.problems
        );
        assert!(found.bundle.is_none());
    }

    #[test]
    fn a_sealed_input_that_is_not_armor_and_a_bundle_without_lock_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kc"), "apiVersion: v1\n").unwrap();
        let armor = "-----BEGIN AGE ENCRYPTED FILE-----\n!!!! not base64 !!!!\n-----END AGE ENCRYPTED FILE-----";
        let text = format!(
            "kubernetes: {{ kubeconfig: kc }}\nflux: {{ url: https://e.org/o/r }}\ntpm: {{ factor: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff, recipient: age1ypdhz4d9jcynk52crgnzq6kq9mdppdqvhfdaq49xktyendswgvjqgs8qye }}\nbundle: {{ dir: {} }}\nsecrets: [ {{ name: s, key: k, sealed: {armor:?} }} ]\n",
            dir.path().display()
        );
        let c = Config::parse(&text, Path::new(&dir.path().join("c.yaml")), &|_| None).unwrap();
        let found = check(&c);
        let fields: Vec<&str> = found.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["secrets[0].sealed", "bundle"],
            "{:?}",
            found.problems
        );
        assert!(found.problems[0].message.contains("not valid age armor"));
        assert!(found.problems[1].message.contains(LOCK_FILE));
    }
}

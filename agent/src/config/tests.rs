//! Parsing and validation of whole configuration files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::steps::StepId;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/agent/config.yaml"), &|_| None)
}

const GOOD: &str = "\
talos: { socket: /system/run/machined/machine.sock, bootstrapEtcd: true }
tpm: { device: /dev/tpmrm0, pcrs: [7], lockPcr: 15, nvIndex: '0x01c1b00a', saltKeyName: 000b0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef, insecureTransport: false, recipient: age1ypdhz4d9jcynk52crgnzq6kq9mdppdqvhfdaq49xktyendswgvjqgs8qye, factor: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff, efivars: /run/efivars }
secrets:
  - { namespace: flux-system, name: sops-age, key: age.agekey }
bundle: { dir: /bundle, fetch: false }
flux: { url: https://github.com/OWNER/REPO, branch: main, path: ./kubernetes/flux-system, interval: 1m, kustomizationInterval: 10m }
status: /var/lib/bootstrap-agent/status.json
deadlines: { talosApi: 10m, etcd: 10m, unseal: 2m, kubeApi: 15m, secrets: 5m, crds: 5m, flux: 5m, ready: 15m }
retry: { initial: 1s, max: 30s }
";

const FACTOR: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const ARMOR: &str = "-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----";

#[test]
fn the_documented_example_is_accepted_with_every_field() {
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.steps.cluster,
        ClusterAccess::Talos {
            socket: DEFAULT_TALOS_SOCKET.into(),
            bootstrap_etcd: true
        }
    );
    assert_eq!(c.steps.tpm.nv_index, 0x01c1_b00a);
    assert_eq!(
        c.steps.tpm.recipient.as_deref(),
        Some("age1ypdhz4d9jcynk52crgnzq6kq9mdppdqvhfdaq49xktyendswgvjqgs8qye")
    );
    assert_eq!(c.steps.tpm.factor, Some(FACTOR.parse().unwrap()));
    assert_eq!(c.steps.tpm.efivars, PathBuf::from("/run/efivars"));
    assert!(
        !format!("{:?}", c.steps.tpm).contains("00112233"),
        "the factor is never shown"
    );
    assert_eq!(
        c.steps.deadlines.for_step(StepId::Unseal),
        Duration::from_secs(120)
    );
    assert_eq!(c.steps.secrets[0].format, SecretFormat::AgeIdentity);
    assert_eq!(c.steps.secrets[0].sealed, None);
    assert_eq!(c.steps.flux.source_interval, Duration::from_secs(60));
    assert_eq!(
        c.steps.deadlines.for_step(StepId::KubeApi),
        Duration::from_secs(900)
    );
    assert_eq!(c.retry.initial, Duration::from_secs(1));
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = parse("kubernetes: { kubeconfig: kc.yaml }\nflux: { url: https://example.org/o/r }\n")
        .unwrap();
    assert_eq!(
        c.steps.cluster,
        ClusterAccess::Kubeconfig {
            path: "/etc/agent/kc.yaml".into()
        }
    );
    assert_eq!(c.steps.tpm, TpmSettings::default());
    assert_eq!(c.steps.tpm.address.to_string(), "/dev/tpmrm0");
    assert_eq!(c.steps.tpm.policy.pcrs(), [7]);
    assert_eq!(c.steps.tpm.policy.lock_pcr(), 15);
    assert_eq!(c.status, PathBuf::from(DEFAULT_STATUS));
    assert_eq!(c.steps.bundle.dir, PathBuf::from(DEFAULT_BUNDLE_DIR));
    assert_eq!(c.steps.flux.path, "./");
}

#[test]
fn every_unknown_field_is_reported_with_its_line_and_a_suggestion() {
    let err = parse(
        "talos: {}\nflux: { url: https://e.org/o/r, brnch: main }\ntpm:\n  lockPCR: 15\nextra: 1\n",
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 3, "{err}");
    let text = err.to_string();
    assert!(text.contains("line 5: extra: unknown field"), "{text}");
    assert!(
        text.contains("flux.brnch") && text.contains("did you mean `branch`"),
        "{text}"
    );
    assert!(
        text.contains("line 4: tpm.lockPCR") && text.contains("`lockPcr`"),
        "{text}"
    );
}

#[test]
fn several_mistakes_are_all_listed() {
    let text = "\
talos: { socket: relative.sock }
tpm: { pcrs: [7, 7, 24], lockPcr: 16 }
secrets:
  - { name: Bad_Name, key: age.agekey, sealed: not-armor }
  - { name: ok, key: token, format: weird }
flux: { url: ftp://example.org/o/r, path: ../outside, interval: soon }
";
    let err = parse(text).unwrap_err();
    let problems = err.problems();
    let joined = problems.join("\n");
    for needle in [
        "talos.socket",
        "PCR 7 is listed twice",
        "24 is not a PCR index",
        "tpm.lockPcr",
        "secrets[0].name",
        "secrets[0].sealed",
        "secrets[1].format",
        "flux.url",
        "flux.path",
        "flux.interval",
    ] {
        assert!(joined.contains(needle), "missing {needle} in:\n{joined}");
    }
    assert!(problems.len() >= 10, "{joined}");
    assert!(joined.contains("line 2:"), "{joined}");
}

#[test]
fn talos_and_kubernetes_are_exclusive_and_one_is_required() {
    let both =
        parse("talos: {}\nkubernetes: { kubeconfig: /k }\nflux: { url: https://e.org/o/r }\n")
            .unwrap_err();
    assert!(both.to_string().contains("both `talos`"), "{both}");
    let neither = parse("flux: { url: https://e.org/o/r }\n").unwrap_err();
    assert!(
        neither
            .to_string()
            .contains("neither `talos` nor `kubernetes`"),
        "{neither}"
    );
}

#[test]
fn age_identities_for_flux_need_an_agekey_key() {
    let err = parse("talos: {}\nflux: { url: https://e.org/o/r }\nsecrets: [ { name: sops-age, key: key.txt, format: ageIdentity } ]\n").unwrap_err();
    assert!(
        err.to_string().contains("kustomize-controller ignores it"),
        "{err}"
    );
}

#[test]
fn ssh_sources_need_credentials() {
    let err = parse("talos: {}\nflux: { url: ssh://git@github.com/o/r }\n").unwrap_err();
    assert!(err.to_string().contains("flux.secretRef"), "{err}");
}

#[test]
fn environment_overrides_win_and_are_validated() {
    let env = |k: &str| match k {
        env::TPM => Some("tcp://127.0.0.1:2321".to_string()),
        env::STATUS => Some("/tmp/s.json".to_string()),
        env::DEADLINE_SCALE => Some("0.5".to_string()),
        _ => None,
    };
    let c = Config::parse(GOOD, Path::new("c.yaml"), &env).unwrap();
    assert_eq!(c.steps.tpm.address.to_string(), "tcp://127.0.0.1:2321");
    assert_eq!(c.status, PathBuf::from("/tmp/s.json"));
    assert_eq!(
        c.steps.deadlines.for_step(StepId::Ready),
        Duration::from_secs(450)
    );
    let bad = |k: &str| (k == env::TPM).then(|| "tcp://nohost".to_string());
    let err = Config::parse(GOOD, Path::new("c.yaml"), &bad).unwrap_err();
    assert!(err.to_string().contains("env BOOTSTRAP_AGENT_TPM"), "{err}");
}

#[test]
fn syntax_errors_name_the_file_and_position() {
    let err = parse("talos: {\nflux: [\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("config.yaml"), "{err}");
    let wrong_type =
        parse("talos: {}\nflux: { url: https://e.org/o/r }\ntpm: { lockPcr: fifteen }\n")
            .unwrap_err();
    assert!(
        wrong_type.to_string().contains("line 3") || wrong_type.to_string().contains("3:"),
        "{wrong_type}"
    );
}

#[test]
fn secrets_need_the_key_factor_and_sealed_ones_the_pinned_recipient() {
    let text = format!(
        "talos: {{}}\nflux: {{ url: https://e.org/o/r }}\nsecrets:\n  - {{ name: sops-age, key: age.agekey, sealed: \"{ARMOR}\" }}\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("tpm.factor: is missing"), "{err}");
    assert!(err.contains("random_bytes"), "{err}");
    assert!(
        err.contains("tpm.recipient: is missing while secrets[0] is sealed"),
        "{err}"
    );
    // Waiting for the first sealed input: the factor is needed already (the recipient shown
    // is derived with it), the recipient is not known yet.
    let first_boot = format!(
        "talos: {{}}\nflux: {{ url: https://e.org/o/r }}\ntpm: {{ factor: {FACTOR} }}\nsecrets: [ {{ name: sops-age, key: age.agekey }} ]\n"
    );
    assert!(parse(&first_boot).is_ok());
    // Terraform writes null for what is not known yet.
    let nulls = format!(
        "talos: {{}}\nflux: {{ url: https://e.org/o/r }}\ntpm: {{ factor: {FACTOR}, recipient: null, saltKeyName: null }}\nsecrets: [ {{ name: sops-age, key: age.agekey, sealed: null }} ]\n"
    );
    let c = parse(&nulls).unwrap();
    assert_eq!(c.steps.tpm.recipient, None);
    assert_eq!(c.steps.secrets[0].sealed, None);
}

#[test]
fn bad_factors_and_recipients_are_named_without_echoing_the_factor() {
    let err = parse(
        "talos: {}\nflux: { url: https://e.org/o/r }\ntpm: { factor: 'c0ffee', recipient: age1nope }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("line 3: tpm.factor: is not 32 bytes in hex"),
        "{err}"
    );
    assert!(!err.contains("c0ffee"), "{err}");
    assert!(
        err.contains("tpm.recipient: `age1nope` is not an age X25519 recipient"),
        "{err}"
    );
}

#[test]
fn simulator_sockets_need_a_pinned_salt_key_or_insecure_transport() {
    let err = parse(
        "talos: {}\nflux: { url: https://e.org/o/r }\ntpm: { device: 'tcp://127.0.0.1:2321' }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tpm.device"), "{err}");
    assert!(err.contains("insecureTransport"), "{err}");
    assert!(
        parse("talos: {}\nflux: { url: https://e.org/o/r }\ntpm: { device: 'unix:///s.sock', insecureTransport: true }\n")
            .is_ok()
    );
    // The environment override is checked the same way.
    let env = |k: &str| (k == env::TPM).then(|| "tcp://127.0.0.1:2321".to_string());
    let err = Config::parse(
        "talos: {}\nflux: { url: https://e.org/o/r }\n",
        Path::new("c.yaml"),
        &env,
    )
    .unwrap_err();
    assert!(err.to_string().contains("saltKeyName"), "{err}");
}

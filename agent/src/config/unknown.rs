//! Fields the agent does not know: all of them reported at once, each with its line and the
//! closest known name.

use serde::de::{self, DeserializeOwned, Visitor};

use super::Problem;
use super::raw::{
    RawBundle, RawConfig, RawFlux, RawKubernetes, RawRetry, RawSecret, RawTalos, RawTpm,
};
use crate::steps::StepId;

/// The fields a section may have: read off the raw types themselves (serde's derive hands
/// their names, after renaming, to the deserializer), so there is no list to keep in sync.
/// The keys of `deadlines:` are the steps that have a deadline of their own.
fn known(section: &str) -> Vec<String> {
    let fields = match section {
        "" => fields::<RawConfig>(),
        "talos" => fields::<RawTalos>(),
        "kubernetes" => fields::<RawKubernetes>(),
        "tpm" => fields::<RawTpm>(),
        "secrets[]" => fields::<RawSecret>(),
        "bundle" => fields::<RawBundle>(),
        "flux" => fields::<RawFlux>(),
        "retry" => fields::<RawRetry>(),
        "deadlines" => {
            return StepId::ALL
                .iter()
                .filter_map(|s| s.deadline_key())
                .collect();
        }
        _ => &[],
    };
    fields.iter().map(|f| f.to_string()).collect()
}

/// The field names a struct's `Deserialize` asks for.
fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut names));
    names
}

/// A deserializer that only records the field names of the struct asked for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names recorded"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Reports every field the agent does not know, with a suggestion when one is close.
pub(super) fn unknown_fields(doc: &serde_json::Value, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(top) = doc.as_object() else {
        return vec![Problem {
            field: "(file)".into(),
            line: None,
            message: "the configuration must be a YAML mapping".into(),
            fix: "start with `talos:` or `kubernetes:` and `flux:`; see README".into(),
        }];
    };
    let mut check =
        |section: &str, prefix: &str, map: &serde_json::Map<String, serde_json::Value>| {
            let allowed = known(section);
            for key in map.keys() {
                if !allowed.contains(key) {
                    let field = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    let fix = match closest(key, &allowed) {
                        Some(s) => format!(
                            "did you mean `{s}`? known fields here: {}",
                            allowed.join(", ")
                        ),
                        None => format!("remove it; known fields here: {}", allowed.join(", ")),
                    };
                    problems.push(Problem {
                        field,
                        line: line_of_key(text, key),
                        message: "unknown field".into(),
                        fix,
                    });
                }
            }
        };
    check("", "", top);
    for (section, value) in top {
        match value {
            serde_json::Value::Object(map) => check(section, section, map),
            serde_json::Value::Array(items) if section == "secrets" => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(map) = item.as_object() {
                        check("secrets[]", &format!("secrets[{i}]"), map);
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

/// The first line that has `key:` as a mapping key, in block or flow style (unknown keys are
/// rare and usually unique).
fn line_of_key(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .position(|line| {
            line.match_indices(key).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + key.len()..].trim_start();
                before.is_none_or(|c| matches!(c, ' ' | '{' | ',' | '-' | '\t'))
                    && after.starts_with(':')
            })
        })
        .map(|i| i as u64 + 1)
}

/// A known name within edit distance 2 of `input`.
fn closest<'a>(input: &str, known: &'a [String]) -> Option<&'a str> {
    let lower = input.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k.as_str()))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fields_are_the_raw_types_fields() {
        assert_eq!(
            known(""),
            [
                "talos",
                "kubernetes",
                "tpm",
                "secrets",
                "bundle",
                "flux",
                "status",
                "deadlines",
                "retry"
            ]
        );
        assert_eq!(
            known("tpm"),
            [
                "device",
                "pcrs",
                "lockPcr",
                "nvIndex",
                "saltKeyName",
                "insecureTransport",
                "recipient",
                "factor",
                "efivars"
            ]
        );
        assert!(known("secrets[]").contains(&"sealedFile".to_string()));
        assert_eq!(
            known("deadlines"),
            [
                "unseal", "talosApi", "etcd", "kubeApi", "secrets", "crds", "flux", "ready",
                "handoff"
            ]
        );
    }
}

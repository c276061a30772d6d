//! Kubernetes names, checked as the API server checks them (RFC 1123 labels and subdomains,
//! Secret data keys), so that a bad name is refused in the configuration, not by the cluster.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use crate::error::Invalid;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:expr, $what:literal, $fix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl FromStr for $name {
            type Err = Invalid;

            fn from_str(s: &str) -> Result<Self, Invalid> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok($name(s.to_string()))
                } else {
                    Err(Invalid::new(format!("`{s}` is not a valid {}", $what), $fix))
                }
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A namespace name: an RFC 1123 label.
    Namespace,
    is_dns_label,
    "namespace name",
    "use lower-case letters, digits and '-', at most 63 characters"
);

name_type!(
    /// An object name (a Secret's, for instance): an RFC 1123 subdomain.
    Name,
    is_dns_subdomain,
    "object name",
    "use lower-case letters, digits, '-' and '.', at most 253 characters"
);

name_type!(
    /// A key of a Secret's `data`.
    DataKey,
    is_data_key,
    "Secret data key",
    "use letters, digits, '-', '_' and '.'"
);

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_servers_rules() {
        assert!("flux-system".parse::<Namespace>().is_ok());
        assert!("Flux".parse::<Namespace>().is_err());
        assert!("a.b".parse::<Namespace>().is_err());
        assert!("sops-age.v1".parse::<Name>().is_ok());
        assert!("Bad_Name".parse::<Name>().is_err());
        assert!("age.agekey".parse::<DataKey>().is_ok());
        assert!("a/b".parse::<DataKey>().is_err());
        let e = "-x".parse::<Namespace>().unwrap_err();
        assert!(e.message.contains("`-x`") && e.fix.contains("63"), "{e}");
    }
}

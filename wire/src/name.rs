//! Names: `org/namespace/service` plus an optional instance id.
//!
//! A name is stored as its canonical string so that the registry can hash and
//! compare it without re-assembling components on the publish path, and so that
//! its wire form is a single MessagePack string.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted component (org, namespace, service or instance), in bytes.
pub const MAX_COMPONENT_LEN: usize = 128;

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("name has {0} components; expected org/namespace/service[/instance]")]
    ComponentCount(usize),
    #[error("name component {index} is empty")]
    EmptyComponent { index: usize },
    #[error("name component {index} is {len} bytes; the limit is {MAX_COMPONENT_LEN}")]
    ComponentTooLong { index: usize, len: usize },
    #[error("name component {index} contains a control character")]
    ControlCharacter { index: usize },
    #[error("name component {index} contains '/'")]
    SlashInComponent { index: usize },
    /// `*` and `>` read as wildcards (as in NATS subjects) but would be
    /// matched literally: refused until wildcard subscriptions exist, so a
    /// name never changes meaning later.
    #[error(
        "wildcards are not supported yet: name component {index} contains '{ch}' (names are matched exactly)"
    )]
    Wildcard { index: usize, ch: char },
}

/// Characters refused in names because they read as wildcards.
const WILDCARDS: [char; 2] = ['*', '>'];

/// A routable name. `Ord`/`Hash` follow the canonical string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    /// Shared so that cloning a name (once per delivery on hot paths) is a
    /// reference-count increment, not an allocation.
    full: Arc<str>,
    /// Byte length of `org/namespace/service` within `full`.
    service_len: usize,
}

fn check_component(index: usize, c: &str) -> Result<(), InvalidName> {
    if c.is_empty() {
        return Err(InvalidName::EmptyComponent { index });
    }
    if c.len() > MAX_COMPONENT_LEN {
        return Err(InvalidName::ComponentTooLong {
            index,
            len: c.len(),
        });
    }
    if c.chars().any(char::is_control) {
        return Err(InvalidName::ControlCharacter { index });
    }
    if c.contains('/') {
        return Err(InvalidName::SlashInComponent { index });
    }
    if let Some(ch) = c.chars().find(|&ch| WILDCARDS.contains(&ch)) {
        return Err(InvalidName::Wildcard { index, ch });
    }
    Ok(())
}

impl Name {
    /// Builds a name from its parts, validating each.
    pub fn new(
        org: &str,
        namespace: &str,
        service: &str,
        instance: Option<&str>,
    ) -> Result<Self, InvalidName> {
        check_component(0, org)?;
        check_component(1, namespace)?;
        check_component(2, service)?;
        let mut full = format!("{org}/{namespace}/{service}");
        let service_len = full.len();
        if let Some(i) = instance {
            check_component(3, i)?;
            full.push('/');
            full.push_str(i);
        }
        Ok(Self {
            full: full.into(),
            service_len,
        })
    }

    /// Parses `org/namespace/service[/instance]`.
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let service_len = Self::validate(s)?;
        Ok(Self {
            full: s.into(),
            service_len,
        })
    }

    /// Checks that `s` is a valid name without building one; returns the
    /// byte length of its `org/namespace/service` part.
    pub fn validate(s: &str) -> Result<usize, InvalidName> {
        if let Some(service_len) = Self::validate_ascii_fast(s) {
            return Ok(service_len);
        }
        Self::validate_slow(s)
    }

    /// One pass over the bytes for the common case (ASCII, valid); `None`
    /// means "let the full check decide" (non-ASCII or invalid), so the two
    /// paths can never disagree about what is valid.
    #[inline]
    fn validate_ascii_fast(s: &str) -> Option<usize> {
        let b = s.as_bytes();
        let mut slashes = 0usize;
        let mut start = 0usize;
        let mut service_len = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if c == b'/' {
                let len = i - start;
                if len == 0 || len > MAX_COMPONENT_LEN {
                    return None;
                }
                slashes += 1;
                if slashes == 3 {
                    service_len = i;
                }
                start = i + 1;
            } else if !(0x20..0x7f).contains(&c) || c == b'*' || c == b'>' {
                return None;
            }
        }
        let last = b.len() - start;
        if last == 0 || last > MAX_COMPONENT_LEN || !(2..=3).contains(&slashes) {
            return None;
        }
        Some(if slashes == 2 { b.len() } else { service_len })
    }

    fn validate_slow(s: &str) -> Result<usize, InvalidName> {
        let mut count = 0;
        let mut service_len = 0;
        for (index, c) in s.split('/').enumerate() {
            count += 1;
            if count > 4 {
                return Err(InvalidName::ComponentCount(s.split('/').count()));
            }
            check_component(index, c)?;
            if index == 2 {
                service_len = c.as_ptr() as usize - s.as_ptr() as usize + c.len();
            }
        }
        if count < 3 {
            return Err(InvalidName::ComponentCount(count));
        }
        Ok(service_len)
    }

    /// The canonical string, `org/namespace/service[/instance]`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `org/namespace/service` without the instance.
    pub fn service_str(&self) -> &str {
        &self.full[..self.service_len]
    }

    fn component(&self, i: usize) -> &str {
        self.full.split('/').nth(i).unwrap_or("")
    }

    pub fn org(&self) -> &str {
        self.component(0)
    }

    pub fn namespace(&self) -> &str {
        self.component(1)
    }

    pub fn service(&self) -> &str {
        self.component(2)
    }

    pub fn instance(&self) -> Option<&str> {
        (self.full.len() > self.service_len).then(|| &self.full[self.service_len + 1..])
    }

    pub fn has_instance(&self) -> bool {
        self.full.len() > self.service_len
    }

    /// The same name without its instance.
    pub fn without_instance(&self) -> Name {
        Name {
            full: self.service_str().into(),
            service_len: self.service_len,
        }
    }

    /// The same service with the given instance.
    pub fn with_instance(&self, instance: &str) -> Result<Name, InvalidName> {
        check_component(3, instance)?;
        let mut full = String::with_capacity(self.service_len + 1 + instance.len());
        full.push_str(self.service_str());
        full.push('/');
        full.push_str(instance);
        Ok(Name {
            full: full.into(),
            service_len: self.service_len,
        })
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.full)
    }
}

impl FromStr for Name {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::parse(s)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name string org/namespace/service[/instance]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
                Name::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let n = Name::parse("acme/eu-west/monitor/7").unwrap();
        assert_eq!(n.org(), "acme");
        assert_eq!(n.namespace(), "eu-west");
        assert_eq!(n.service(), "monitor");
        assert_eq!(n.instance(), Some("7"));
        assert_eq!(n.service_str(), "acme/eu-west/monitor");
        let s = Name::parse("acme/eu-west/monitor").unwrap();
        assert_eq!(s.instance(), None);
        assert_eq!(n.without_instance(), s);
        assert_eq!(s.with_instance("7").unwrap(), n);
    }

    #[test]
    fn fast_and_slow_paths_agree() {
        let long = "x".repeat(MAX_COMPONENT_LEN);
        let too_long = "x".repeat(MAX_COMPONENT_LEN + 1);
        let cases = [
            "a/b/c".to_string(),
            "a/b/c/d".into(),
            "a/b".into(),
            "a/b/c/d/e".into(),
            "/b/c".into(),
            "a/b/c/".into(),
            "a//c".into(),
            format!("a/b/{long}"),
            format!("a/b/{too_long}"),
            format!("{long}/b/c/{long}"),
            "a/b/c\x7f".into(),
            "a/b/c\t".into(),
            "a/b/\u{85}".into(),
            "ä/b/c".into(),
            "".into(),
            "/".into(),
            "a/b/*".into(),
            "a/>/c".into(),
            "a/b/c/x*y".into(),
        ];
        for c in &cases {
            let slow = Name::validate_slow(c);
            match Name::validate_ascii_fast(c) {
                Some(n) => assert_eq!(slow, Ok(n), "{c:?}"),
                None => assert!(
                    slow.is_err() || !c.is_ascii(),
                    "{c:?}: fast path refused a valid ASCII name"
                ),
            }
        }
    }

    #[test]
    fn invalid() {
        assert_eq!(Name::parse("a/b"), Err(InvalidName::ComponentCount(2)));
        assert_eq!(
            Name::parse("a/b/c/d/e"),
            Err(InvalidName::ComponentCount(5))
        );
        assert_eq!(
            Name::parse("a//c"),
            Err(InvalidName::EmptyComponent { index: 1 })
        );
        assert_eq!(
            Name::parse("a/b/c\n"),
            Err(InvalidName::ControlCharacter { index: 2 })
        );
        assert!(matches!(
            Name::parse(&format!("a/b/{}", "x".repeat(200))),
            Err(InvalidName::ComponentTooLong { index: 2, len: 200 })
        ));
        assert_eq!(
            Name::new("a", "b/x", "c", None),
            Err(InvalidName::SlashInComponent { index: 1 })
        );
        assert_eq!(
            Name::parse(""),
            Err(InvalidName::EmptyComponent { index: 0 })
        );
    }

    #[test]
    fn wildcards_refused_everywhere_a_name_is_made() {
        assert_eq!(
            Name::parse("acme/news/*"),
            Err(InvalidName::Wildcard { index: 2, ch: '*' })
        );
        assert_eq!(
            Name::parse("acme/>/x"),
            Err(InvalidName::Wildcard { index: 1, ch: '>' })
        );
        assert_eq!(
            Name::validate("acme/news/a*b/0"),
            Err(InvalidName::Wildcard { index: 2, ch: '*' })
        );
        assert_eq!(
            Name::new("acme", "news", "alerts", Some(">")),
            Err(InvalidName::Wildcard { index: 3, ch: '>' })
        );
        let base = Name::parse("acme/news/alerts").unwrap();
        assert_eq!(
            base.with_instance("*"),
            Err(InvalidName::Wildcard { index: 3, ch: '*' })
        );
        let e = Name::parse("acme/news/*").unwrap_err().to_string();
        assert!(e.starts_with("wildcards are not supported yet"), "{e}");
    }
}

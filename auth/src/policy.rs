//! Authorization: which SPIFFE ID may register as, publish to and subscribe
//! to which names.
//!
//! A policy is a list of rules. A rule matches SPIFFE IDs by pattern and
//! grants three lists of name patterns. Once a policy is configured, anything
//! no rule grants is denied, and an ID that matches no rule at all may not
//! connect. [`Policy::allow_all`] exists for development and says so.
//!
//! Patterns are matched per `/`-separated segment: `*` matches exactly one
//! segment, and `**` as the last segment matches one or more remaining
//! segments. So `acme/eu-west/security-monitor/*` matches every instance of
//! that service, and `spiffe://acme.example/cluster-a/**` every ID under that
//! path.

use serde::Deserialize;

use crate::SpiffeId;

/// One rule as written in a policy file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// SPIFFE ID pattern, e.g. `spiffe://acme.example/cluster-a/agent/*`.
    pub spiffe_id: String,
    /// Full names (with instance) this identity may register as.
    #[serde(default)]
    pub register: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// One `[[rule]]` table of a policy file: a [`Rule`] and whether the
/// identity is a node that may open a peer link.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    pub spiffe_id: String,
    #[serde(default)]
    pub register: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Federation: the identity may open a peer link. A client identity
    /// without it is refused as a peer. Peers are trusted to assert the
    /// original sender's name and SPIFFE ID on what they forward.
    #[serde(default)]
    pub peer: bool,
}

/// The policy file: `[[rule]]` tables.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleEntry>,
}

/// What a client asks to do with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Register,
    Publish,
    Subscribe,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Register => "register",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("rule {index}: invalid SPIFFE ID pattern {pattern:?}: {reason}")]
    IdPattern {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("rule {index}: invalid name pattern {pattern:?}: {reason}")]
    NamePattern {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("cannot parse policy: {0}")]
    Parse(String),
}

/// A refusal, with the reason shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{id} is not allowed by the authorization policy")]
    UnknownIdentity { id: String },
    #[error("{id} may not {} {name}", action.as_str())]
    Name {
        id: String,
        action: Action,
        name: String,
    },
    #[error("the connection has no authenticated identity")]
    Anonymous,
    #[error("{id} may not open a peer link (no policy rule grants it `peer = true`)")]
    NotPeer { id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    One,
    Rest,
}

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, String> {
        if p.is_empty() {
            return Err("empty pattern".into());
        }
        let parts: Vec<&str> = p.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, s) in parts.iter().enumerate() {
            segs.push(match *s {
                "" => return Err("empty segment".into()),
                "*" => Seg::One,
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return Err("`**` is only allowed as the last segment".into()),
                lit if lit.contains('*') => {
                    return Err(format!("`*` must be a whole segment, not part of {lit:?}"));
                }
                lit => Seg::Lit(lit.to_owned()),
            });
        }
        Ok(Pattern { segs })
    }

    fn matches(&self, s: &str) -> bool {
        let mut it = s.split('/');
        for seg in &self.segs {
            match seg {
                Seg::Rest => return it.next().is_some_and(|x| !x.is_empty()),
                Seg::One => match it.next() {
                    Some(x) if !x.is_empty() => {}
                    _ => return false,
                },
                Seg::Lit(l) => {
                    if it.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        it.next().is_none()
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    /// Pattern over `trust-domain/path...` (the ID without `spiffe://`).
    id: Pattern,
    register: Vec<Pattern>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    peer: bool,
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Option<Vec<CompiledRule>>,
}

/// The grants of one identity, computed once per connection.
#[derive(Debug, Clone)]
pub struct Grants {
    id: String,
    all: bool,
    register: Vec<Pattern>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    peer: bool,
}

impl Grants {
    /// Grants nothing: what an identity gets once a reloaded policy no longer
    /// knows it (its connection stays, every action is refused).
    pub fn none(id: &str) -> Grants {
        Grants {
            id: id.to_owned(),
            all: false,
            register: vec![],
            publish: vec![],
            subscribe: vec![],
            peer: false,
        }
    }

    /// Whether this identity may open a peer link.
    pub fn check_peer(&self) -> Result<(), Denied> {
        if self.all || self.peer {
            Ok(())
        } else {
            Err(Denied::NotPeer {
                id: self.id.clone(),
            })
        }
    }

    /// Checks one action on one (already validated) name.
    pub fn check(&self, action: Action, name: &str) -> Result<(), Denied> {
        if self.all {
            return Ok(());
        }
        let list = match action {
            Action::Register => &self.register,
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
        };
        if list.iter().any(|p| p.matches(name)) {
            Ok(())
        } else {
            Err(Denied::Name {
                id: self.id.clone(),
                action,
                name: name.to_owned(),
            })
        }
    }

    /// True when every action is allowed (development policy).
    pub fn is_unrestricted(&self) -> bool {
        self.all
    }
}

impl Policy {
    /// Allows every authenticated identity everything. Development only.
    pub fn allow_all() -> Policy {
        Policy { rules: None }
    }

    pub fn is_allow_all(&self) -> bool {
        self.rules.is_none()
    }

    /// A policy of client rules (no identity may open a peer link).
    pub fn from_rules(rules: &[Rule]) -> Result<Policy, PolicyError> {
        Self::compile(rules.iter().map(|r| (r, false)))
    }

    /// A policy from policy-file entries (`peer` included).
    pub fn from_entries(entries: &[RuleEntry]) -> Result<Policy, PolicyError> {
        let rules: Vec<(Rule, bool)> = entries
            .iter()
            .map(|e| {
                (
                    Rule {
                        spiffe_id: e.spiffe_id.clone(),
                        register: e.register.clone(),
                        publish: e.publish.clone(),
                        subscribe: e.subscribe.clone(),
                    },
                    e.peer,
                )
            })
            .collect();
        Self::compile(rules.iter().map(|(r, p)| (r, *p)))
    }

    fn compile<'a>(
        rules: impl ExactSizeIterator<Item = (&'a Rule, bool)>,
    ) -> Result<Policy, PolicyError> {
        let mut out = Vec::with_capacity(rules.len());
        for (index, (r, peer)) in rules.enumerate() {
            let id = r
                .spiffe_id
                .strip_prefix("spiffe://")
                .ok_or_else(|| "must start with spiffe://".to_string())
                .and_then(Pattern::parse)
                .map_err(|reason| PolicyError::IdPattern {
                    index,
                    pattern: r.spiffe_id.clone(),
                    reason,
                })?;
            let names = |list: &[String]| -> Result<Vec<Pattern>, PolicyError> {
                list.iter()
                    .map(|p| {
                        Pattern::parse(p).map_err(|reason| PolicyError::NamePattern {
                            index,
                            pattern: p.clone(),
                            reason,
                        })
                    })
                    .collect()
            };
            out.push(CompiledRule {
                id,
                register: names(&r.register)?,
                publish: names(&r.publish)?,
                subscribe: names(&r.subscribe)?,
                peer,
            });
        }
        Ok(Policy { rules: Some(out) })
    }

    /// Parses a policy file (TOML with `[[rule]]` tables).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        Policy::from_entries(&file.rules)
    }

    /// The union of the grants of every rule matching `id`; an ID matched by
    /// no rule may not connect.
    pub fn grants(&self, id: Option<&SpiffeId>) -> Result<Grants, Denied> {
        let Some(rules) = &self.rules else {
            return Ok(Grants {
                id: id.map(|i| i.to_string()).unwrap_or_default(),
                all: true,
                register: vec![],
                publish: vec![],
                subscribe: vec![],
                peer: true,
            });
        };
        let id = id.ok_or(Denied::Anonymous)?;
        let bare = id.as_str().trim_start_matches("spiffe://");
        let mut g = Grants {
            id: id.to_string(),
            all: false,
            register: vec![],
            publish: vec![],
            subscribe: vec![],
            peer: false,
        };
        let mut matched = false;
        for r in rules.iter().filter(|r| r.id.matches(bare)) {
            matched = true;
            g.register.extend(r.register.iter().cloned());
            g.publish.extend(r.publish.iter().cloned());
            g.subscribe.extend(r.subscribe.iter().cloned());
            g.peer |= r.peer;
        }
        if matched {
            Ok(g)
        } else {
            Err(Denied::UnknownIdentity { id: id.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[rule]]
spiffe_id = "spiffe://acme.example/cluster-a/agent/security-monitor"
register = ["acme/eu-west/security-monitor/*"]
publish = ["acme/monitoring/*", "acme/escalation/**"]
subscribe = ["acme/monitoring/*"]

[[rule]]
spiffe_id = "spiffe://acme.example/ops/**"
subscribe = ["acme/**"]
"#;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn rules_grant_and_deny() {
        let p = Policy::from_toml(POLICY).unwrap();
        let g = p
            .grants(Some(&id(
                "spiffe://acme.example/cluster-a/agent/security-monitor",
            )))
            .unwrap();
        assert!(
            g.check(Action::Register, "acme/eu-west/security-monitor/7")
                .is_ok()
        );
        assert!(
            g.check(Action::Register, "acme/eu-west/security-monitor")
                .is_err()
        );
        assert!(
            g.check(Action::Register, "acme/eu-west/remediation/7")
                .is_err()
        );
        assert!(
            g.check(Action::Subscribe, "acme/monitoring/security-incident")
                .is_ok()
        );
        assert!(
            g.check(Action::Subscribe, "acme/monitoring/security-incident/x")
                .is_err()
        );
        assert!(
            g.check(Action::Publish, "acme/escalation/human-review")
                .is_ok()
        );
        assert!(g.check(Action::Publish, "acme/escalation").is_err());
        let e = g.check(Action::Publish, "acme/other/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "spiffe://acme.example/cluster-a/agent/security-monitor may not publish acme/other/x"
        );
        let ops = p
            .grants(Some(&id("spiffe://acme.example/ops/alice")))
            .unwrap();
        assert!(ops.check(Action::Subscribe, "acme/a/b/c").is_ok());
        assert!(ops.check(Action::Publish, "acme/a/b").is_err());
    }

    #[test]
    fn unknown_identity_and_anonymous_are_refused() {
        let p = Policy::from_toml(POLICY).unwrap();
        assert!(matches!(
            p.grants(Some(&id("spiffe://acme.example/cluster-b/agent/x"))),
            Err(Denied::UnknownIdentity { .. })
        ));
        assert_eq!(p.grants(None).unwrap_err(), Denied::Anonymous);
        assert!(Policy::allow_all().grants(None).unwrap().is_unrestricted());
    }

    #[test]
    fn only_rules_with_peer_grant_peer_links() {
        let p = Policy::from_toml(
            r#"
[[rule]]
spiffe_id = "spiffe://acme.example/node/*"
peer = true

[[rule]]
spiffe_id = "spiffe://acme.example/agent/*"
subscribe = ["acme/**"]
"#,
        )
        .unwrap();
        let node = p.grants(Some(&id("spiffe://acme.example/node/a"))).unwrap();
        assert!(node.check_peer().is_ok());
        let agent = p
            .grants(Some(&id("spiffe://acme.example/agent/x")))
            .unwrap();
        assert!(matches!(agent.check_peer(), Err(Denied::NotPeer { .. })));
        assert!(Grants::none("x").check_peer().is_err());
        assert!(
            Policy::allow_all()
                .grants(None)
                .unwrap()
                .check_peer()
                .is_ok()
        );
    }

    #[test]
    fn bad_patterns_are_errors() {
        for (text, want) in [
            (
                "[[rule]]\nspiffe_id = \"acme.example/x\"",
                "must start with spiffe://",
            ),
            (
                "[[rule]]\nspiffe_id = \"spiffe://a/**/b\"",
                "only allowed as the last",
            ),
            (
                "[[rule]]\nspiffe_id = \"spiffe://a/b\"\npublish = [\"a/b*/c\"]",
                "whole segment",
            ),
            (
                "[[rule]]\nspiffe_id = \"spiffe://a/b\"\npublish = [\"a//c\"]",
                "empty segment",
            ),
            ("[[rule]]\nspiffe = \"x\"", "unknown field"),
        ] {
            let e = Policy::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}

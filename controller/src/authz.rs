//! Who may talk to the controller: SPIFFE ID patterns for nodes and for
//! admins. A pattern is a SPIFFE ID whose path segments may be `*` (exactly
//! one segment) or, last, `**` (one or more segments), e.g.
//! `spiffe://acme.example/*/node/*` or `spiffe://acme.example/ops/**`; the
//! trust domain is matched literally.

use slim_auth::SpiffeId;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SPIFFE ID pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    One,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    trust_domain: String,
    segs: Vec<Seg>,
}

impl IdPattern {
    pub fn parse(p: &str) -> Result<IdPattern, PatternError> {
        let err = |reason: &str| PatternError {
            pattern: p.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = p
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("must start with spiffe://"))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if td.is_empty() || td.contains('*') {
            return Err(err("the trust domain must be literal"));
        }
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let mut segs = Vec::with_capacity(parts.len());
        for (i, s) in parts.iter().enumerate() {
            segs.push(match *s {
                "" => return Err(err("empty path segment")),
                "*" => Seg::One,
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return Err(err("`**` is only allowed as the last segment")),
                lit if lit.contains('*') => return Err(err("`*` must be a whole segment")),
                lit => Seg::Lit(lit.to_owned()),
            });
        }
        Ok(IdPattern {
            trust_domain: td.to_owned(),
            segs,
        })
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain() != self.trust_domain {
            return false;
        }
        let path = id.path().trim_start_matches('/');
        let mut it = path.split('/').filter(|s| !s.is_empty());
        for seg in &self.segs {
            match seg {
                Seg::Rest => return it.next().is_some(),
                Seg::One => {
                    if it.next().is_none() {
                        return false;
                    }
                }
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

/// The roles a caller may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    pub node: bool,
    pub admin: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Authz {
    nodes: Vec<IdPattern>,
    admins: Vec<IdPattern>,
}

impl Authz {
    pub fn new(nodes: &[String], admins: &[String]) -> Result<Authz, PatternError> {
        let parse = |v: &[String]| -> Result<Vec<IdPattern>, PatternError> {
            v.iter().map(|p| IdPattern::parse(p)).collect()
        };
        Ok(Authz {
            nodes: parse(nodes)?,
            admins: parse(admins)?,
        })
    }

    pub fn roles(&self, id: &SpiffeId) -> Roles {
        Roles {
            node: self.nodes.iter().any(|p| p.matches(id)),
            admin: self.admins.iter().any(|p| p.matches(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn node_and_admin_patterns() {
        let a = Authz::new(
            &["spiffe://acme.example/*/node/*".into()],
            &["spiffe://acme.example/ops/**".into()],
        )
        .unwrap();
        assert_eq!(
            a.roles(&id("spiffe://acme.example/eu/node/n1")),
            Roles {
                node: true,
                admin: false
            }
        );
        assert_eq!(
            a.roles(&id("spiffe://acme.example/ops/alice")),
            Roles {
                node: false,
                admin: true
            }
        );
        assert_eq!(
            a.roles(&id("spiffe://acme.example/ops/team/bob")),
            Roles {
                node: false,
                admin: true
            }
        );
        // `**` needs at least one segment; `*` exactly one.
        assert_eq!(a.roles(&id("spiffe://acme.example/ops")), Roles::default());
        assert_eq!(
            a.roles(&id("spiffe://acme.example/eu/node/n1/x")),
            Roles::default()
        );
        assert_eq!(
            a.roles(&id("spiffe://other.example/eu/node/n1")),
            Roles::default()
        );
        assert_eq!(
            a.roles(&id("spiffe://acme.example/agent/x")),
            Roles::default()
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in [
            "acme/x",
            "spiffe://*/x",
            "spiffe://acme/a*",
            "spiffe://acme/**/x",
            "spiffe://acme//x",
        ] {
            assert!(IdPattern::parse(p).is_err(), "{p}");
        }
        assert!(
            IdPattern::parse("spiffe://acme/exact/id")
                .unwrap()
                .matches(&id("spiffe://acme/exact/id"))
        );
    }
}

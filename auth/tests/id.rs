use slim_auth::{InvalidId, SpiffeId, TrustDomain};

#[test]
fn valid_ids() {
    let table: &[(&str, &str, &str)] = &[
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://example.org/node", "example.org", "/node"),
        (
            "spiffe://prod.slim-fabric_1.io/ns/default/sa/node-1",
            "prod.slim-fabric_1.io",
            "/ns/default/sa/node-1",
        ),
        ("spiffe://td/A.b-C_d/..x/x..", "td", "/A.b-C_d/..x/x.."),
        ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ];
    for (input, td, path) in table {
        let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input} rejected: {e}"));
        assert_eq!(id.trust_domain(), *td, "{input}");
        assert_eq!(id.path(), *path, "{input}");
        assert_eq!(id.as_str(), *input);
        assert_eq!(id.to_string(), *input);
        let via_fromstr: SpiffeId = input.parse().unwrap();
        assert_eq!(via_fromstr, id);
    }
}

#[test]
fn invalid_ids() {
    let long_path = format!("spiffe://example.org/{}", "a".repeat(2048));
    let long_td = format!("spiffe://{}/x", "a".repeat(256));
    let table: Vec<(&str, InvalidId)> = vec![
        ("", InvalidId::Empty),
        (
            "https://example.org/x",
            InvalidId::WrongScheme {
                found: "https".into(),
            },
        ),
        (
            "SPIFFE://example.org/x",
            InvalidId::WrongScheme {
                found: "SPIFFE".into(),
            },
        ),
        (
            "example.org/x",
            InvalidId::WrongScheme {
                found: "example.org/x".into(),
            },
        ),
        ("spiffe:///x", InvalidId::MissingTrustDomain),
        ("spiffe://", InvalidId::MissingTrustDomain),
        (
            "spiffe://Example.org/x",
            InvalidId::BadTrustDomainChar { ch: 'E' },
        ),
        (
            "spiffe://exa mple.org",
            InvalidId::BadTrustDomainChar { ch: ' ' },
        ),
        (
            "spiffe://exämple.org",
            InvalidId::BadTrustDomainChar { ch: 'ä' },
        ),
        ("spiffe://example.org:8443/x", InvalidId::HasPort),
        ("spiffe://user@example.org/x", InvalidId::HasUserInfo),
        ("spiffe://example.org/x?a=b", InvalidId::HasQuery),
        ("spiffe://example.org/x#frag", InvalidId::HasFragment),
        ("spiffe://example.org/", InvalidId::TrailingSlash),
        ("spiffe://example.org/x/", InvalidId::TrailingSlash),
        ("spiffe://example.org//x", InvalidId::EmptySegment),
        ("spiffe://example.org/a//b", InvalidId::EmptySegment),
        (
            "spiffe://example.org/./x",
            InvalidId::DotSegment {
                segment: ".".into(),
            },
        ),
        (
            "spiffe://example.org/a/..",
            InvalidId::DotSegment {
                segment: "..".into(),
            },
        ),
        (
            "spiffe://example.org/a%20b",
            InvalidId::BadPathChar { ch: '%' },
        ),
        (
            "spiffe://example.org/a b",
            InvalidId::BadPathChar { ch: ' ' },
        ),
        (
            "spiffe://example.org/a:b",
            InvalidId::BadPathChar { ch: ':' },
        ),
        ("spiffe://example.org/ü", InvalidId::BadPathChar { ch: 'ü' }),
        (
            &long_path,
            InvalidId::TooLong {
                len: long_path.len(),
            },
        ),
        (&long_td, InvalidId::TrustDomainTooLong { len: 256 }),
    ];
    for (input, expected) in table {
        assert_eq!(
            SpiffeId::parse(input),
            Err(expected.clone()),
            "input {input:?}"
        );
        // Every variant must render a human-readable reason.
        assert!(!expected.to_string().is_empty());
    }
}

#[test]
fn max_length_id_is_accepted() {
    let prefix = "spiffe://example.org/";
    let id = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    assert_eq!(id.len(), 2048);
    assert!(SpiffeId::parse(&id).is_ok());
}

#[test]
fn from_parts_and_trust_domain() {
    let id = SpiffeId::from_parts("example.org", "/a/b").unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/a/b");
    let id = SpiffeId::from_parts("example.org", "a/b").unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/a/b");
    assert!(id.is_member_of("example.org"));
    assert!(!id.is_member_of("example.com"));

    let td = TrustDomain::parse("example.org").unwrap();
    assert_eq!(td.as_str(), "example.org");
    assert_eq!(td.id().as_str(), "spiffe://example.org");
    assert_eq!(
        TrustDomain::parse("spiffe://example.org").unwrap(),
        td,
        "trust domain ID form"
    );
    assert_eq!(
        TrustDomain::parse("spiffe://example.org/x"),
        Err(InvalidId::TrustDomainHasPath)
    );
    assert_eq!(
        TrustDomain::parse("Example.org"),
        Err(InvalidId::BadTrustDomainChar { ch: 'E' })
    );
    assert_eq!(TrustDomain::parse("example.org:1"), Err(InvalidId::HasPort));
}

#[test]
fn ids_hash_and_compare_by_value() {
    use std::collections::HashSet;
    let a = SpiffeId::parse("spiffe://example.org/a").unwrap();
    let b = SpiffeId::parse("spiffe://example.org/b").unwrap();
    let set: HashSet<_> = [a.clone(), b.clone(), a.clone()].into_iter().collect();
    assert_eq!(set.len(), 2);
    assert!(set.contains(&SpiffeId::parse("spiffe://example.org/a").unwrap()));
}

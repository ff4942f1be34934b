use super::*;

#[test]
fn reference_config_parses() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/node.toml");
    let cfg = FileConfig::load(&p).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.node.listen.port(), 4500);
    let policy = cfg.load_policy().unwrap();
    assert!(!policy.is_allow_all());
}

#[test]
fn federation_section_maps_to_static_peers() {
    let cfg = FileConfig::parse(
        r#"
[identity]
dir = "/id"
[authz]
mode = "allow_all"
[federation]
keep_alive_ms = 5000
link_timeout_ms = 20000
[[federation.peers]]
node_id = "b-1"
address = "127.0.0.1:4600"
spiffe_id = "spiffe://acme.example/cluster-b/node"
"#,
        Path::new("x.toml"),
    )
    .unwrap();
    cfg.validate().unwrap();
    let fc = cfg.node_config().federation;
    assert_eq!(fc.keep_alive, Duration::from_secs(5));
    assert_eq!(fc.link_timeout, Duration::from_secs(20));
    assert_eq!(fc.peers.len(), 1);
    assert_eq!(fc.peers[0].node_id, "b-1");
    assert_eq!(fc.peers[0].server_name, "slim-node");
    assert_eq!(
        fc.peers[0].expect_spiffe_id.as_ref().map(|i| i.as_str()),
        Some("spiffe://acme.example/cluster-b/node")
    );
    for bad in [
        "[[federation.peers]]\nnode_id = \"bad id\"\naddress = \"127.0.0.1:1\"",
        "[[federation.peers]]\nnode_id = \"b\"\naddress = \"nowhere\"",
        "[federation]\nkeep_alive_ms = 40000",
    ] {
        let text = format!("[identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"\n{bad}");
        let cfg = FileConfig::parse(&text, Path::new("x.toml")).unwrap();
        assert!(cfg.validate().is_err(), "{bad}");
    }
}

#[test]
fn reset_key_file_is_relative_to_the_config_and_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[node]\nreset_key_file = \"state/reset.key\"\n\
                [identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"";
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let cfg = FileConfig::parse(text, &dir.path().join("node.toml")).unwrap();
    let path = dir.path().join("state/reset.key");
    assert_eq!(cfg.node.reset_key_file.as_deref(), Some(path.as_path()));
    let origin = |k: ResetKey| match k {
        ResetKey::Secret(s) => s.origin().clone(),
        ResetKey::FromTlsKey => panic!("expected the file's secret"),
    };
    let first = origin(cfg.reset_key().unwrap());
    assert_eq!(
        first,
        slim_auth::ResetSecretOrigin::File {
            path: path.clone(),
            created: true
        }
    );
    let again = origin(cfg.reset_key().unwrap());
    assert!(matches!(
        again,
        slim_auth::ResetSecretOrigin::File { created: false, .. }
    ));
    // Without the option the secret comes from the TLS key.
    let plain = FileConfig::parse(
        "[identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(matches!(plain.reset_key().unwrap(), ResetKey::FromTlsKey));
}

/// A minimal valid file with `node` and `rest` added to its sections,
/// parsed and validated.
fn minimal_with(node: &str, rest: &str) -> Result<FileConfig, ConfigError> {
    FileConfig::parse(
        &format!("[node]\n{node}\n[identity]\ndir=\"d\"\n[authz]\nmode=\"allow_all\"\n{rest}"),
        Path::new("x.toml"),
    )
    .and_then(|c| c.validate().map(|()| c))
}

#[test]
fn max_udp_payload_is_checked() {
    let with = |v: u32| {
        minimal_with(&format!("max_udp_payload = {v}"), "").map(|c| c.node.max_udp_payload)
    };
    assert_eq!(with(1452).unwrap(), 1452);
    let e = with(1199).unwrap_err();
    assert!(e.to_string().contains("node.max_udp_payload"), "{e}");
    // Over u16 fails to parse at all.
    assert!(with(70_000).is_err());
}

#[test]
fn the_link_ceiling_is_its_own_and_checked() {
    let with = |v: u32| minimal_with("", &format!("[federation]\nmax_udp_payload = {v}"));
    let c = with(8952).unwrap();
    let cfg = c.federation.federation_config();
    assert_eq!(cfg.max_udp_payload, 8952);
    assert_eq!(
        c.node.max_udp_payload, 1452,
        "the clients' ceiling is unchanged"
    );
    let e = with(1000).unwrap_err();
    assert!(e.to_string().contains("federation.max_udp_payload"), "{e}");
}

#[test]
fn unknown_key_is_an_error() {
    let e = FileConfig::parse(
        "[node]\nlisten_addr = \"x\"\n[identity]\ndir=\"d\"\n[authz]\nmode=\"allow_all\"",
        Path::new("x.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("listen_addr"), "{e}");
}

#[test]
fn env_overrides() {
    let mut cfg = FileConfig::parse(
        "[identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"",
        Path::new("/etc/x.toml"),
    )
    .unwrap();
    cfg.apply_env(|k| (k == "SLIM_LISTEN").then(|| "127.0.0.1:7000".into()))
        .unwrap();
    assert_eq!(cfg.node.listen.port(), 7000);
    let e = cfg
        .apply_env(|k| (k == "SLIM_LISTEN").then(|| "nope".into()))
        .unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Env {
            var: "SLIM_LISTEN",
            ..
        }
    ));
}

#[test]
fn authz_must_be_explicit() {
    let e = FileConfig::parse("[identity]\ndir = \"/id\"", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("authz"), "{e}");
    let cfg = FileConfig::parse(
        "[identity]\ndir = \"/id\"\n[authz]\nmode = \"policy\"",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("policy_file")
    );
}

#[test]
fn controller_section() {
    let mut cfg = FileConfig::parse(
        "[identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"\n[controller]\naddress = \"ctl:4600\"\nexternal_endpoint = \"0.0.0.0:4500\"",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("external_endpoint")
    );
    cfg.apply_env(|k| (k == "SLIM_EXTERNAL_ENDPOINT").then(|| "192.0.2.1:4500".into()))
        .unwrap();
    cfg.validate().unwrap();
    let l = cfg.controller.as_ref().unwrap().link_config().unwrap();
    assert_eq!(l.external_endpoint.as_deref(), Some("192.0.2.1:4500"));
    // A DNS name is kept as the name.
    cfg.apply_env(|k| (k == "SLIM_EXTERNAL_ENDPOINT").then(|| "node-b.example:4500".into()))
        .unwrap();
    cfg.validate().unwrap();
    let l = cfg.controller.as_ref().unwrap().link_config().unwrap();
    assert_eq!(l.external_endpoint.as_deref(), Some("node-b.example:4500"));
    let bad = cfg.apply_env(|k| (k == "SLIM_EXTERNAL_ENDPOINT").then(|| "node-b".into()));
    assert!(bad.unwrap_err().to_string().contains("host:port"));
    assert_eq!(l.server_name, "slim-controller");
    // The env var alone enables the link.
    let mut cfg = FileConfig::parse(
        "[identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(cfg.controller.is_none());
    cfg.apply_env(|k| (k == "SLIM_CONTROLLER").then(|| "10.0.0.1:4600".into()))
        .unwrap();
    assert_eq!(cfg.controller.unwrap().address, "10.0.0.1:4600");
}

#[test]
fn host_port_forms() {
    for ok in [
        "10.0.0.1:4500",
        "[::1]:4500",
        "localhost:4500",
        "slim-node.prod.svc:4500",
    ] {
        check_host_port(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "localhost",
        "localhost:0",
        ":4500",
        "a b:4500",
        "host:port",
        "10.0.0.1:0",
    ] {
        assert!(check_host_port(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn peer_names_are_kept_for_the_dial() {
    let cfg = FileConfig::parse(
        "[identity]\ndir = \"/id\"\n[authz]\nmode = \"allow_all\"\n\
         [[federation.peers]]\nnode_id = \"b\"\naddress = \"no-such-host.invalid:4500\"",
        Path::new("x.toml"),
    )
    .unwrap();
    // Not resolved at load: a peer whose name resolves later still links.
    cfg.validate().unwrap();
    let specs = cfg.federation.peer_specs().unwrap();
    assert_eq!(specs[0].addr, "no-such-host.invalid:4500");
}

#[test]
fn identity_must_be_complete() {
    let cfg = FileConfig::parse(
        "[identity]\ncert = \"a\"\n[authz]\nmode = \"allow_all\"",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(cfg.validate().is_err());
}

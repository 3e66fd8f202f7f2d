//! The Kubernetes manifests of deploy/kubernetes/ (issue 17): valid against
//! the Kubernetes schemas (kubernetes-validate, pinned, offline: `cargo
//! xtask test` installs it), and the fields that make fw work and fail
//! closed on a node are there. The ConfigMap's policy is the shipped one
//! and compiles with its variables.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use yaml_rust2::{Yaml, YamlLoader};

const VALIDATOR_VERSION: &str = "1.37.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn manifests() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(file: &str) -> Yaml {
    let path = root().join("deploy/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// `kubernetes-validate`: `$FW_KUBERNETES_VALIDATE`, else where the
/// bootstrap installs it.
fn validator() -> PathBuf {
    if let Some(path) = std::env::var_os("FW_KUBERNETES_VALIDATE") {
        return path.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let path = Path::new(&home)
        .join(".cache/fw")
        .join(format!("kubernetes-validate-{VALIDATOR_VERSION}"))
        .join("bin/kubernetes-validate");
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask test` installs kubernetes-validate {VALIDATOR_VERSION} there \
         (or set FW_KUBERNETES_VALIDATE)",
        path.display()
    );
    path
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let files = manifests();
    assert!(files.len() >= 3, "{files:?}");
    // The schema of the newest Kubernetes the validator knows, and of an
    // older one still in support by distributions.
    for version in ["1.37.0", "1.30.0"] {
        let out = Command::new(validator())
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("running kubernetes-validate");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubernetes-validate {version} rejected the manifests:\n{text}");
        assert_eq!(text.matches(" passed ").count(), files.len(), "{text}");
    }
}

#[test]
fn kubernetes_validate_rejects_a_misspelt_field() {
    // The check above can fail: a field the schema does not know is an error.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    std::fs::write(&bad, text.replace("hostNetwork:", "hostNetwrk:")).unwrap();
    let out = Command::new(validator()).arg("--strict").arg(&bad).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_daemonset_runs_fw_on_the_nodes_namespaces_with_the_measured_capabilities() {
    let ds = load("daemonset.yaml");
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "the node's interface");
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "process attribution, bpffs check");
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false), "no API access, no RBAC");
    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let fw = &containers[0];

    let sc = &fw["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    let caps = |key: &str| -> Vec<&str> {
        sc["capabilities"][key].as_vec().unwrap().iter().map(|c| c.as_str().unwrap()).collect()
    };
    assert_eq!(caps("drop"), ["ALL"]);
    assert_eq!(caps("add"), ["BPF", "NET_ADMIN", "PERFMON", "SYS_PTRACE"]);
    assert!(!caps("add").contains(&"SYS_ADMIN"));

    // The node's bpffs, the node's state directories: the pins and the
    // instance outlive the pod.
    let volumes = pod["volumes"].as_vec().unwrap();
    let host_path = |name: &str| -> (&str, &str) {
        let v = volumes.iter().find(|v| v["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("volume {name}"));
        (v["hostPath"]["path"].as_str().unwrap(), v["hostPath"]["type"].as_str().unwrap())
    };
    assert_eq!(host_path("bpffs"), ("/sys/fs/bpf", "Directory"));
    assert_eq!(host_path("run").0, "/run/fw");
    assert_eq!(host_path("lib").0, "/var/lib/fw");
    let mounts = fw["volumeMounts"].as_vec().unwrap();
    let mount =
        |name: &str| mounts.iter().find(|m| m["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("mount {name}"));
    assert_eq!(mount("bpffs")["mountPath"].as_str(), Some("/sys/fs/bpf"));
    assert_eq!(mount("bpffs")["mountPropagation"].as_str(), Some("HostToContainer"));
    assert_eq!(mount("run")["mountPath"].as_str(), Some("/run/fw"));
    assert_eq!(mount("lib")["mountPath"].as_str(), Some("/var/lib/fw"));

    // `fw run --watch` on the ConfigMap's files, under the name the probes ask for.
    let args: Vec<&str> = fw["args"].as_vec().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "run");
    let value = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    assert!(args.contains(&"--watch"), "{args:?}");
    assert_eq!(value("--name"), Some("fw"));
    let config = mount("config")["mountPath"].as_str().unwrap();
    assert_eq!(value("--policy"), Some(format!("{config}/policy.yaml").as_str()));
    assert_eq!(value("--env-file"), Some(format!("{config}/fw.env").as_str()));
    let config_volume = volumes.iter().find(|v| v["name"].as_str() == Some("config")).unwrap();
    assert_eq!(config_volume["configMap"]["name"].as_str(), Some("fw-policy"));

    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let command: Vec<&str> = fw[probe]["exec"]["command"]
            .as_vec()
            .unwrap_or_else(|| panic!("{probe}"))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(command, ["/usr/local/bin/fw", "status", "--name", "fw"], "{probe}");
    }
}

#[test]
fn the_configmap_holds_the_shipped_media_node_policy_and_it_compiles() {
    let cm = load("configmap.yaml");
    assert_eq!(cm["metadata"]["name"].as_str(), Some("fw-policy"));
    let policy = cm["data"]["policy.yaml"].as_str().unwrap();
    let shipped = std::fs::read_to_string(root().join("policies/openvidu2-media-node.yaml")).unwrap();
    assert_eq!(
        policy, shipped,
        "deploy/kubernetes/configmap.yaml embeds policies/openvidu2-media-node.yaml: copy it again (indented 4)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (policy_file, env_file) = (dir.path().join("policy.yaml"), dir.path().join("fw.env"));
    std::fs::write(&policy_file, policy).unwrap();
    std::fs::write(&env_file, cm["data"]["fw.env"].as_str().unwrap()).unwrap();
    for phase in ["install", "runtime"] {
        let out = Command::new(env!("CARGO_BIN_EXE_fw"))
            .arg("check")
            .arg(&policy_file)
            .args(["--phase", phase, "--env-file"])
            .arg(&env_file)
            .output()
            .unwrap();
        assert!(out.status.code() != Some(2), "fw check --phase {phase}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

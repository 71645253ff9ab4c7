//! Issue 6, acceptance 2: the Kubernetes manifests, the compose file, the
//! Dockerfile and the Slurm scripts are checked offline. Every YAML document
//! must parse; beyond that, the fields gradsweep relies on are cross-checked
//! against each other and against the real binaries: every flag a manifest
//! passes is one the binary accepts, probes hit the ports and services that
//! exist, the Service selects the coordinator pod, workers dial the Service,
//! the database sits on the persistent volume, the token comes from the
//! Secret, and the autoscalers read a metric the coordinator exports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gradsweep_coordinator::metrics::CoordinatorMetrics;
use gradsweep_coordinator::store::StateCounts;
use gradsweep_tests::bin;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a YAML file.
fn docs(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

/// Follows a path of keys (and `[i]` indices as numbers in strings).
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        }
        .unwrap_or_else(|| panic!("missing `{key}` of `{path}` in {v:?}"));
    }
    cur
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path).as_str().unwrap_or_else(|| panic!("`{path}` is not a string"))
}

fn u(v: &Value, path: &str) -> u64 {
    at(v, path).as_u64().unwrap_or_else(|| panic!("`{path}` is not an integer"))
}

fn strings(v: &Value, path: &str) -> Vec<String> {
    at(v, path).as_sequence().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn labels(v: &Value, path: &str) -> BTreeMap<String, String> {
    at(v, path)
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect()
}

/// The value of `--name=value` in an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
        .unwrap_or_else(|| panic!("--{name} missing from {args:?}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn help(binary: &str, sub: &[&str]) -> String {
    let out = std::process::Command::new(bin(binary)).args(sub).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Each `--flag` in `args` appears in the binary's help.
fn assert_flags_accepted(args: &[String], help: &str, what: &str) {
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let name = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{name} ")) || help.contains(&format!("{name}\n")),
            "{what}: {name} is not a flag"
        );
    }
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind) && s(d, "metadata.name") == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container_port(c: &Value, name: &str) -> u64 {
    at(c, "ports")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| s(p, "name") == name)
        .map(|p| u(p, "containerPort"))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn mount_path<'a>(pod: &'a Value, c: &'a Value, volume: &str) -> &'a str {
    assert!(
        at(pod, "volumes").as_sequence().map(|vs| vs.iter().any(|v| s(v, "name") == volume)).unwrap_or(false)
            || volume == "data",
        "volume {volume} is not declared"
    );
    at(c, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| s(m, "name") == volume)
        .map(|m| s(m, "mountPath"))
        .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
}

fn secret_name<'a>(pod: &'a Value, volume: &str) -> &'a str {
    let v = at(pod, "volumes").as_sequence().unwrap().iter().find(|v| s(v, "name") == volume).unwrap();
    s(v, "secret.secretName")
}

fn parent(p: &str) -> &str {
    Path::new(p).parent().unwrap().to_str().unwrap()
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let files = ["deploy/k8s/coordinator.yaml", "deploy/k8s/workers.yaml"];
    let all: Vec<Value> = files.iter().flat_map(|f| docs(f)).collect();
    for d in &all {
        for key in ["apiVersion", "kind", "metadata.name"] {
            assert!(!s(d, key).is_empty());
        }
    }
    let kust = &docs("deploy/k8s/kustomization.yaml")[0];
    let listed = strings(kust, "resources");
    assert_eq!(listed, ["coordinator.yaml", "workers.yaml"]);

    // Coordinator StatefulSet.
    let sts = find(&all, "StatefulSet", "gradsweep-coordinator");
    assert_eq!(u(sts, "spec.replicas"), 1, "the database is single-writer: one coordinator");
    let pod_labels = labels(sts, "spec.template.metadata.labels");
    for (k, v) in labels(sts, "spec.selector.matchLabels") {
        assert_eq!(pod_labels.get(&k), Some(&v), "selector label {k}");
    }
    let pod = at(sts, "spec.template.spec");
    let c = at(pod, "containers.0");
    assert_eq!(strings(c, "command"), ["gradsweep"]);
    let args = strings(c, "args");
    assert_eq!(args[0], "serve");
    assert_flags_accepted(&args[1..], &help("gradsweep", &["serve"]), "coordinator");
    let grpc = port_of(flag(&args, "listen"));
    assert!(flag(&args, "listen").starts_with("0.0.0.0:"), "must listen off loopback in a pod");
    assert_eq!(container_port(c, "grpc"), grpc);
    let metrics = port_of(flag(&args, "metrics-listen"));
    assert_eq!(container_port(c, "metrics"), metrics);
    let ann = labels(sts, "spec.template.metadata.annotations");
    assert_eq!(ann["prometheus.io/port"].parse::<u64>().unwrap(), metrics);
    // The database on the claim; the token from the Secret.
    let claim = s(sts, "spec.volumeClaimTemplates.0.metadata.name");
    assert_eq!(parent(flag(&args, "db")), mount_path(pod, c, claim));
    assert_eq!(parent(flag(&args, "token-file")), mount_path(pod, c, "token"));
    assert_eq!(secret_name(pod, "token"), "gradsweep-token");
    // Probes: the gRPC health protocol on the gRPC port, for real services.
    let proto = read("proto/proto/gradsweep.proto");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(u(c, &format!("{probe}.grpc.port")), grpc);
        let svc = s(c, &format!("{probe}.grpc.service"));
        let short = svc.strip_prefix("gradsweep.v1.").expect("a gradsweep.v1 service");
        assert!(proto.contains("package gradsweep.v1;") && proto.contains(&format!("service {short} ")), "{svc}");
    }
    assert!(!s(c, "resources.requests.cpu").is_empty() && !s(c, "resources.requests.memory").is_empty());

    // The Service selects the coordinator pod and exposes its named ports.
    let svc = find(&all, "Service", "gradsweep-coordinator");
    for (k, v) in labels(svc, "spec.selector") {
        assert_eq!(pod_labels.get(&k), Some(&v), "Service selector {k}");
    }
    let svc_ports = at(svc, "spec.ports").as_sequence().unwrap();
    for p in svc_ports {
        container_port(c, s(p, "targetPort"));
    }
    let svc_grpc = svc_ports.iter().find(|p| s(p, "name") == "grpc").map(|p| u(p, "port")).unwrap();
    assert_eq!(s(sts, "spec.serviceName"), "gradsweep-coordinator");

    // Workers dial the Service with the same token and expose /healthz.
    let dep = find(&all, "Deployment", "gradsweep-worker");
    let wlabels = labels(dep, "spec.template.metadata.labels");
    for (k, v) in labels(dep, "spec.selector.matchLabels") {
        assert_eq!(wlabels.get(&k), Some(&v));
    }
    assert_ne!(wlabels, pod_labels, "the Service must not select workers");
    let wpod = at(dep, "spec.template.spec");
    let w = at(wpod, "containers.0");
    assert_eq!(strings(w, "command"), ["gradsweep-worker"]);
    let wargs = strings(w, "args");
    let whelp = help("gradsweep-worker", &[]);
    assert_flags_accepted(&wargs, &whelp, "worker");
    assert_eq!(flag(&wargs, "coordinator"), format!("gradsweep-coordinator:{svc_grpc}"));
    assert_eq!(parent(flag(&wargs, "token-file")), mount_path(wpod, w, "token"));
    assert_eq!(secret_name(wpod, "token"), "gradsweep-token");
    let env_names: Vec<&str> = at(w, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| s(e, "name"))
        .filter(|n| n.starts_with("GRADSWEEP_"))
        .collect();
    for n in env_names {
        assert!(whelp.contains(&format!("env: {n}=")), "worker does not read {n}");
    }
    let wmetrics = port_of(flag(&wargs, "metrics-listen"));
    assert_eq!(container_port(w, "metrics"), wmetrics);
    assert_eq!(s(w, "livenessProbe.httpGet.path"), "/healthz");
    assert_eq!(s(w, "livenessProbe.httpGet.port"), "metrics");
    let slots: f64 = flag(&wargs, "slots").parse().unwrap();
    let cpu: f64 = s(w, "resources.requests.cpu").trim_end_matches('m').parse().unwrap();
    let cpu = if s(w, "resources.requests.cpu").ends_with('m') { cpu / 1000.0 } else { cpu };
    assert!(slots <= cpu, "{slots} slots need {slots} CPUs, request is {cpu}");
    assert!(u(wpod, "terminationGracePeriodSeconds") >= 10, "time to hand leases back");

    // Autoscalers target the worker Deployment on a metric the coordinator exports.
    let exported = CoordinatorMetrics::default().render(&StateCounts::default());
    let hpa = &docs("deploy/k8s/autoscaling/hpa.yaml")[0];
    assert_eq!(s(hpa, "spec.scaleTargetRef.name"), "gradsweep-worker");
    assert_eq!(s(hpa, "spec.scaleTargetRef.kind"), "Deployment");
    let metric = s(hpa, "spec.metrics.0.external.metric.name");
    assert!(exported.contains(&format!("\n{metric} ")), "{metric} is not exported");
    let keda = &docs("deploy/k8s/autoscaling/keda-scaledobject.yaml")[0];
    assert_eq!(s(keda, "spec.scaleTargetRef.name"), "gradsweep-worker");
    assert!(s(keda, "spec.triggers.0.metadata.query").contains(metric));
}

#[test]
fn compose_file_is_consistent() {
    let c = &docs("deploy/compose.yaml")[0];
    let coord = at(c, "services.coordinator");
    let cmd = strings(coord, "command");
    assert_eq!(&cmd[..2], ["gradsweep", "serve"]);
    assert_flags_accepted(&cmd[2..], &help("gradsweep", &["serve"]), "compose coordinator");
    let ctx = repo().join("deploy").join(s(coord, "build.context"));
    assert!(ctx.join(s(coord, "build.dockerfile")).is_file(), "the Dockerfile path is relative to the context");
    let db_dir = parent(flag(&cmd, "db"));
    assert!(strings(coord, "volumes").iter().any(|v| v.ends_with(&format!(":{db_dir}"))), "database on a volume");
    let volume = strings(coord, "volumes")[0].split(':').next().unwrap().to_string();
    assert!(at(c, "volumes").get(volume.as_str()).is_some(), "volume {volume} declared");
    let secret = strings(coord, "secrets")[0].clone();
    assert_eq!(flag(&cmd, "token-file"), format!("/run/secrets/{secret}"));
    assert!(at(c, "secrets").get(secret.as_str()).is_some());
    let hc = strings(coord, "healthcheck.test");
    assert_eq!(&hc[..3], ["CMD", "gradsweep", "status"]);
    assert_flags_accepted(&hc[3..], &help("gradsweep", &["status"]), "healthcheck");

    let worker = at(c, "services.worker");
    let wcmd = strings(worker, "command");
    assert_eq!(wcmd[0], "gradsweep-worker");
    assert_flags_accepted(&wcmd[1..], &help("gradsweep-worker", &[]), "compose worker");
    let port = port_of(flag(&cmd, "listen"));
    assert_eq!(flag(&wcmd, "coordinator"), format!("coordinator:{port}"));
    assert_eq!(flag(&wcmd, "token-file"), format!("/run/secrets/{secret}"));
    assert_eq!(s(worker, "image"), s(coord, "image"));
    assert_eq!(s(worker, "depends_on.coordinator.condition"), "service_healthy");
}

#[test]
fn dockerfile_builds_and_ships_both_binaries() {
    let text = read("deploy/Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    assert!(froms[0].ends_with(" AS build"));
    let build = text.lines().find(|l| l.contains("cargo build")).unwrap();
    for pkg in ["gradsweep-cli", "gradsweep-worker"] {
        assert!(build.contains(&format!("-p {pkg}")), "{pkg} is built");
        assert!(
            read(&format!("{}/Cargo.toml", pkg.trim_start_matches("gradsweep-")))
                .contains(&format!("name = \"{pkg}\""))
        );
    }
    let copy = text.lines().find(|l| l.starts_with("COPY --from=build")).unwrap();
    for b in ["gradsweep", "gradsweep-worker"] {
        assert!(copy.contains(&format!("/out/{b} ")), "{b} is shipped");
    }
    let user = text.lines().find(|l| l.starts_with("USER ")).expect("an unprivileged user");
    assert_ne!(user.trim(), "USER root");
    assert!(read(".dockerignore").lines().any(|l| l == "target/"), "target/ stays out of the build context");
}

#[test]
fn slurm_scripts_parse_and_use_real_flags() {
    for f in ["deploy/slurm/gradsweep.sbatch", "deploy/slurm/workers.sbatch", "deploy/slurm/ci-test.sh"] {
        let out = std::process::Command::new("bash").arg("-n").arg(repo().join(f)).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let serve = help("gradsweep", &["serve"]);
    for f in ["--listen", "--db", "--port-file"] {
        assert!(serve.contains(f));
    }
    let worker = help("gradsweep-worker", &[]);
    for env in ["GRADSWEEP_COORDINATOR", "GRADSWEEP_TOKEN_FILE", "GRADSWEEP_IDLE_EXIT_SECS"] {
        assert!(worker.contains(&format!("env: {env}=")), "worker reads {env}");
    }
}

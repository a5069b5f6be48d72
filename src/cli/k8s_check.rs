//! `netcage k8s-check`: what a pod needs for its egress to be netcage's. The nft rules of
//! `netcage k8s-init` let the proxy's uid out as it is; everything else goes to the sidecar
//! or is rejected. That holds while no other container runs as the proxy's uid (directly, or
//! through a setuid program), holds NET_RAW (AF_PACKET skips netfilter) or NET_ADMIN (flushes
//! the rules), shares the host's network or the sidecar's processes, or can read the key.
//!
//! YAML is read with serde-saphyr (panic-free on any input, maintained; serde_yaml is
//! deprecated and serde_yml unmaintained) into `serde_json::Value`.

use serde_json::Value;

/// Capabilities that break the boundary when an app container adds them.
const DANGEROUS: &[&str] = &["ALL", "NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SETUID"];

/// The problems of every pod in `text` (YAML, one or more documents), one line each, and how
/// many pods (or workloads) there were.
pub fn check(text: &str, default_uid: u32) -> Result<(Vec<String>, usize), String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let e = e.to_string();
        let first = e.lines().next().unwrap_or("").trim().to_owned();
        format!("not valid YAML: {first}")
    })?;
    let mut out = Vec::new();
    let mut pods = 0;
    for doc in &docs {
        pods += check_doc(doc, default_uid, &mut out);
    }
    Ok((out, pods))
}

fn check_doc(doc: &Value, default_uid: u32, out: &mut Vec<String>) -> usize {
    if doc.get("kind").and_then(Value::as_str) == Some("List") {
        return doc
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| check_doc(item, default_uid, out))
            .sum();
    }
    let Some(spec) = pod_spec(doc) else { return 0 };
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let what = format!("{kind}/{name}");
    let mut say = |line: String| out.push(format!("{what}: {line}"));
    check_pod(spec, default_uid, &mut say);
    1
}

/// The pod template of a Pod or workload.
fn pod_spec(doc: &Value) -> Option<&Value> {
    let kind = doc.get("kind")?.as_str()?;
    let pointer = match kind {
        "Pod" => "/spec",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => "/spec/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        _ => return None,
    };
    doc.pointer(pointer).filter(|v| v.is_object())
}

struct Container<'a> {
    c: &'a Value,
    name: String,
    init: bool,
}

fn words(c: &Value) -> Vec<&str> {
    ["command", "args"]
        .iter()
        .filter_map(|k| c.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn runs_k8s_init(c: &Value) -> bool {
    words(c).contains(&"k8s-init")
}

fn runs_sidecar(c: &Value) -> bool {
    let w = words(c);
    w.contains(&"proxy") && w.contains(&"--transparent")
}

/// `--proxy-uid N` or `--proxy-uid=N` among the init container's words.
fn proxy_uid_of(c: &Value) -> Option<u32> {
    let w = words(c);
    w.iter().enumerate().find_map(|(i, word)| {
        if let Some(v) = word.strip_prefix("--proxy-uid=") {
            return v.parse().ok();
        }
        (*word == "--proxy-uid").then(|| w.get(i + 1)?.parse().ok())?
    })
}

fn truthy(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool) == Some(true)
}

fn uid_of(c: &Value, pod: &Value) -> Option<u64> {
    c.pointer("/securityContext/runAsUser")
        .or_else(|| pod.pointer("/securityContext/runAsUser"))
        .and_then(Value::as_u64)
}

fn caps(c: &Value, which: &str) -> Vec<String> {
    c.pointer(&format!("/securityContext/capabilities/{which}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| {
            let s = s.to_ascii_uppercase();
            s.strip_prefix("CAP_").map(str::to_owned).unwrap_or(s)
        })
        .collect()
}

/// Names of the Secrets a volume draws on.
fn volume_secrets(volume: &Value) -> Vec<String> {
    let mut out: Vec<String> = volume
        .pointer("/secret/secretName")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    for source in volume
        .pointer("/projected/sources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = source.pointer("/secret/name").and_then(Value::as_str) {
            out.push(name.to_owned());
        }
    }
    out
}

/// The Secrets a container's environment draws on.
fn env_secrets(c: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        if let Some(n) = e
            .pointer("/valueFrom/secretKeyRef/name")
            .and_then(Value::as_str)
        {
            out.push(n.to_owned());
        }
    }
    for e in c
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = e.pointer("/secretRef/name").and_then(Value::as_str) {
            out.push(n.to_owned());
        }
    }
    out
}

fn mounts(c: &Value) -> Vec<&str> {
    c.get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("name").and_then(Value::as_str))
        .collect()
}

/// netcage's own containers: the init step and the sidecar.
fn is_netcage(c: &Container) -> bool {
    runs_sidecar(c.c) || (c.init && runs_k8s_init(c.c))
}

fn check_pod(pod: &Value, default_uid: u32, say: &mut dyn FnMut(String)) {
    for (field, why) in [
        (
            "hostNetwork",
            "the pod uses the node's network namespace: k8s-init would load its rules there, and the node's traffic is not the pod's to redirect",
        ),
        (
            "shareProcessNamespace",
            "the app would see the sidecar's processes (and its /proc/PID/root, environment and memory maps where the kernel allows)",
        ),
        (
            "hostPID",
            "the app would see the node's processes, the sidecar's among them",
        ),
    ] {
        if truthy(pod.get(field)) {
            say(format!("{field}: true: {why}; remove it"));
        }
    }
    let mut all = Vec::new();
    for (list, init) in [
        ("initContainers", true),
        ("containers", false),
        ("ephemeralContainers", false),
    ] {
        for c in pod
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)")
                .to_owned();
            all.push(Container { c, name, init });
        }
    }
    let init = all.iter().find(|c| c.init && runs_k8s_init(c.c));
    let uid = init.and_then(|c| proxy_uid_of(c.c)).unwrap_or(default_uid);
    if init.is_none() {
        say("no init container runs `netcage k8s-init`: nothing redirects or blocks the pod's egress; add it (with capabilities.add: [NET_ADMIN])".into());
    }
    let sidecar = all.iter().find(|c| runs_sidecar(c.c));
    match sidecar {
        None => say(
            "no container runs `netcage proxy --transparent`: the redirected connections would find nothing; add it as an init container with restartPolicy: Always".into(),
        ),
        Some(s) => {
            let always = s.c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
            if !s.init || !always {
                say(format!(
                    "container {:?} runs the sidecar but is not an init container with restartPolicy: Always (a native sidecar, Kubernetes 1.29 or later): the app could start before it is ready; move it to initContainers with restartPolicy: Always",
                    s.name
                ));
            }
            match uid_of(s.c, pod) {
                Some(u) if u == u64::from(uid) => {}
                other => say(format!(
                    "container {:?} runs the sidecar as {}, not as the proxy's uid {uid}: its own connections would be redirected or rejected; set its runAsUser: {uid}",
                    s.name,
                    other.map_or("the image's user".to_owned(), |u| format!("uid {u}"))
                )),
            }
        }
    }
    // The Secrets only the sidecar may see: those it mounts or reads into its environment.
    let volumes: Vec<(&str, Vec<String>)> = pod
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v.get("name")?.as_str()?, volume_secrets(v))))
        .collect();
    let mut secret_names = Vec::new();
    if let Some(s) = sidecar {
        for m in mounts(s.c) {
            for (name, secrets) in &volumes {
                if *name == m {
                    secret_names.extend(secrets.iter().cloned());
                }
            }
        }
        secret_names.extend(env_secrets(s.c));
    }
    let apps = all.iter().filter(|c| !is_netcage(c));
    for app in apps {
        let (c, name) = (app.c, &app.name);
        let mut say = |line: String| say(format!("container {name:?}: {line}"));
        match uid_of(c, pod) {
            None => say(format!(
                "no runAsUser (in it or the pod's securityContext): it runs as its image's user, which may be the proxy's uid {uid}; set runAsUser to another uid"
            )),
            Some(u) if u == u64::from(uid) => say(format!(
                "runs as uid {u}, the proxy's: its traffic would leave the pod unproxied; give it another runAsUser"
            )),
            Some(_) => {}
        }
        if truthy(c.pointer("/securityContext/privileged")) {
            say("privileged: true: it holds every capability (NET_ADMIN flushes the rules); remove it".into());
        }
        if c.pointer("/securityContext/allowPrivilegeEscalation")
            .and_then(Value::as_bool)
            != Some(false)
        {
            say(format!(
                "allowPrivilegeEscalation is not false: a setuid program (one owned by uid {uid}) would run as the proxy; set securityContext.allowPrivilegeEscalation: false"
            ));
        }
        if !caps(c, "drop").iter().any(|c| c == "ALL") {
            say("does not drop ALL capabilities: NET_RAW alone gives AF_PACKET sockets, which bypass nftables; set securityContext.capabilities.drop: [ALL]".into());
        }
        for cap in caps(c, "add") {
            if DANGEROUS.contains(&cap.as_str()) {
                say(format!(
                    "adds capability {cap}: with it the app can {}; remove it",
                    match cap.as_str() {
                        "NET_RAW" => "send raw packets past nftables (AF_PACKET)",
                        "NET_ADMIN" => "flush the pod's nft rules",
                        "SETUID" => "become the proxy's uid",
                        _ => "undo the pod's rules",
                    }
                ));
            }
        }
        for m in mounts(c) {
            if let Some((_, secrets)) = volumes.iter().find(|(n, _)| *n == m)
                && let Some(secret) = secrets.iter().find(|s| secret_names.contains(s))
            {
                say(format!(
                    "mounts volume {m:?} of Secret {secret:?}, which the sidecar uses: the app could read the key or the real values; mount it only in the sidecar"
                ));
            }
        }
        for secret in env_secrets(c) {
            if secret_names.contains(&secret) {
                say(format!(
                    "reads Secret {secret:?}, which the sidecar uses, into its environment: give the app tokens instead"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: agent}
spec:
  securityContext: {fsGroup: 1337}
  initContainers:
  - name: netcage-init
    image: netcage:local
    args: [k8s-init, --proxy-uid, "1337"]
    securityContext:
      runAsUser: 0
      capabilities: {drop: [ALL], add: [NET_ADMIN]}
  - name: netcage
    image: netcage:local
    restartPolicy: Always
    args: [proxy, --transparent, --key-file, /secret/vault_key]
    env:
    - name: API_KEY
      valueFrom: {secretKeyRef: {name: netcage-values, key: api-key}}
    volumeMounts: [{name: key, mountPath: /secret}]
    securityContext:
      runAsUser: 1337
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
  containers:
  - name: app
    image: app
    volumeMounts: [{name: shared, mountPath: /netcage}]
    securityContext:
      runAsUser: 1000
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
  volumes:
  - name: key
    secret: {secretName: netcage-key, defaultMode: 0440}
  - name: shared
    emptyDir: {medium: Memory}
"#;

    #[test]
    fn a_good_pod_has_no_problem() {
        assert_eq!(check(GOOD, 1337).unwrap(), (Vec::<String>::new(), 1));
        let none = check("kind: Secret\nmetadata: {name: s}\n", 1337).unwrap();
        assert_eq!(none, (Vec::<String>::new(), 0));
    }

    #[test]
    fn an_app_as_the_proxy_uid_is_caught() {
        let bad = GOOD.replace("runAsUser: 1000", "runAsUser: 1337");
        let found = check(&bad, 1337).unwrap().0;
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("\"app\": runs as uid 1337"), "{found:?}");
        // The uid is k8s-init's, not the default.
        let other = GOOD
            .replace("\"1337\"]", "\"2000\"]")
            .replace("runAsUser: 1337", "runAsUser: 2000")
            .replace("runAsUser: 1000", "runAsUser: 2000");
        let found = check(&other, 1337).unwrap().0;
        assert!(
            found.iter().any(|l| l.contains("runs as uid 2000")),
            "{found:?}"
        );
    }

    #[test]
    fn every_way_round_the_boundary_is_one_line() {
        let bad = GOOD
            .replace("  securityContext: {fsGroup: 1337}", "  hostNetwork: true\n  shareProcessNamespace: true")
            .replace("      runAsUser: 1000\n      allowPrivilegeEscalation: false\n      capabilities: {drop: [ALL]}", "      runAsUser: 1000\n      capabilities: {add: [NET_RAW, cap_net_admin]}")
            .replace("volumeMounts: [{name: shared, mountPath: /netcage}]", "volumeMounts: [{name: key, mountPath: /k}]\n    envFrom: [{secretRef: {name: netcage-values}}]");
        let found = check(&bad, 1337).unwrap().0;
        for needle in [
            "hostNetwork: true",
            "shareProcessNamespace: true",
            "allowPrivilegeEscalation",
            "does not drop ALL",
            "adds capability NET_RAW",
            "adds capability NET_ADMIN",
            "mounts volume \"key\" of Secret \"netcage-key\"",
            "reads Secret \"netcage-values\"",
        ] {
            assert_eq!(
                found.iter().filter(|l| l.contains(needle)).count(),
                1,
                "{needle}: {found:#?}"
            );
        }
        assert_eq!(found.len(), 8, "{found:#?}");
    }

    #[test]
    fn a_pod_without_the_sidecar_or_init_says_so() {
        let found = check(
            "kind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers:\n      - {name: app, securityContext: {runAsUser: 5, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}\n",
            1337,
        )
        .unwrap()
        .0;
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("Deployment/d: no init container runs"));
        assert!(found[1].contains("no container runs `netcage proxy --transparent`"));
    }

    #[test]
    fn bad_yaml_is_one_line_and_never_a_panic() {
        for text in [
            "a: [",
            "kind: Pod\nspec: 3\n",
            "- - - ",
            "\0\u{feff}",
            "{{{{",
            "kind: Pod\nspec:\n  containers: 5\n",
        ] {
            match check(text, 1337) {
                Ok((lines, pods)) => assert!(pods == 0 || !lines.is_empty()),
                Err(e) => assert!(!e.contains('\n'), "{e}"),
            }
        }
    }
}

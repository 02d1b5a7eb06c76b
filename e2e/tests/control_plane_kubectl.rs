//! The test control plane through kubectl and the kubeconfig it writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use grokcast_e2e::TestControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn new(cp: &TestControlPlane) -> Self {
        let cache = cp.kubeconfig_path().with_file_name("kubectl-cache");
        Self {
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            cache,
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).await.expect("write stdin");
        }
        drop(pipe);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finished in time")
            .expect("kubectl output");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

fn kubectl_available() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join("kubectl").is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("GROKCAST_REQUIRE_KUBECTL").is_none(),
            "GROKCAST_REQUIRE_KUBECTL is set but kubectl is not on PATH"
        );
        eprintln!("SKIPPED: kubectl is not on PATH (install kubectl to run the kubectl tests)");
    }
    found
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Engine, type: string, jsonPath: .spec.engine}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [engine]
            properties:
              engine: {type: string, enum: [vllm, whisper]}
              replicas: {type: integer, minimum: 0, default: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_and_deletes_through_the_kubeconfig() {
    if !kubectl_available() {
        return;
    }
    let cp = TestControlPlane::start().await.expect("control plane");
    let k = Kubectl::new(&cp);

    let out = k
        .ok(&["apply", "--server-side", "-f", "-"], Some(CRD))
        .await;
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/widgets.example.com serverside-applied"
        ),
        "{out}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client().await.expect("client"));
    let established = kube::runtime::wait::await_condition(
        crds,
        "widgets.example.com",
        kube::runtime::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(10), established)
        .await
        .expect("established")
        .expect("watch");

    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: demo}\ndata: {a: '1', b: '2'}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: demo}\nspec: {engine: vllm, replicas: 3}\n";
    let out = k
        .ok(&["apply", "--server-side", "-f", "-"], Some(manifest))
        .await;
    assert!(out.contains("namespace/demo serverside-applied"), "{out}");
    assert!(
        out.contains("configmap/settings serverside-applied"),
        "{out}"
    );
    assert!(
        out.contains("widget.example.com/w1 serverside-applied"),
        "{out}"
    );

    let table = k.ok(&["get", "widgets", "-n", "demo"], None).await;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        vec!["NAME", "ENGINE", "REPLICAS", "AGE"],
        "{table}"
    );
    assert_eq!(&lines[1][..3], &["w1", "vllm", "3"], "{table}");
    let short = k
        .ok(
            &[
                "get",
                "wg",
                "w1",
                "-n",
                "demo",
                "-o",
                "jsonpath={.spec.engine}",
            ],
            None,
        )
        .await;
    assert_eq!(short, "vllm");

    // Re-applying without `b` removes it: kubectl's manager owned it.
    let smaller = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: demo}\ndata: {a: '1'}\n";
    k.ok(&["apply", "--server-side", "-f", "-"], Some(smaller))
        .await;
    let data = k
        .ok(
            &[
                "get",
                "configmap",
                "settings",
                "-n",
                "demo",
                "-o",
                "jsonpath={.data}",
            ],
            None,
        )
        .await;
    assert_eq!(data, r#"{"a":"1"}"#);

    let bad = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2, namespace: demo}\nspec: {engine: tgi}\n";
    let out = k
        .run(&["apply", "--server-side", "-f", "-"], Some(bad))
        .await;
    assert!(!out.ok, "invalid widget accepted: {}", out.stdout);
    assert!(
        out.stderr.contains(
            "spec.engine: Unsupported value: \"tgi\": supported values: \"vllm\", \"whisper\""
        ),
        "{}",
        out.stderr
    );

    let out = k.ok(&["delete", "widget", "w1", "-n", "demo"], None).await;
    assert!(out.contains("widget.example.com \"w1\" deleted"), "{out}");
    let out = k.run(&["get", "widget", "w1", "-n", "demo"], None).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("NotFound") || out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    cp.shutdown().await;
}

fn repo_path(rel: &str) -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// One section of `kubectl get` output as rows of (header, cell), cut at the
/// header's column offsets so that empty cells stay empty instead of shifting.
fn table_rows(section: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = section.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return vec![];
    };
    let mut starts = vec![];
    let mut prev_space = true;
    for (i, ch) in header.char_indices() {
        if ch != ' ' && prev_space {
            starts.push(i);
        }
        prev_space = ch == ' ';
    }
    lines
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(n, &s)| {
                    let end = starts.get(n + 1).copied().unwrap_or(line.len());
                    let name = header[s..starts.get(n + 1).copied().unwrap_or(header.len())].trim();
                    let cell = line.get(s..end.min(line.len())).unwrap_or_default().trim();
                    (name.to_string(), cell.to_string())
                })
                .collect()
        })
        .collect()
}

/// Text with all whitespace runs made one space, to compare explain's wrapped output.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn crd_description(file: &str, pointer: &str) -> String {
    let text = std::fs::read_to_string(repo_path(&format!("crds/yaml/{file}"))).expect("CRD file");
    let crd: serde_json::Value = serde_yaml::from_str(&text).expect("CRD yaml");
    crd.pointer(&format!(
        "/spec/versions/0/schema/openAPIV3Schema/{pointer}/description"
    ))
    .and_then(serde_json::Value::as_str)
    .expect("documented field")
    .to_string()
}

/// What a platform team sees with kubectl once the operator has reconciled the
/// samples: printer columns, categories and short names, conditions and Events
/// in `describe`, field docs in `explain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_the_operators_work_on_the_samples() {
    use grokcast_operator::run::{CancellationToken, OperatorConfig};
    if !kubectl_available() {
        return;
    }
    let limit = Duration::from_secs(30);
    let poll = Duration::from_millis(200);
    grokcast_operator::run::install_crypto_provider();
    let cp = TestControlPlane::start().await.expect("control plane");
    let k = Kubectl::new(&cp);
    k.ok(
        &["apply", "--server-side", "-f", &repo_path("crds/yaml")],
        None,
    )
    .await;
    grokcast_e2e::eventually("the CRDs served", limit, poll, || async {
        k.run(&["get", "voiceagents,modelpools", "-A"], None)
            .await
            .ok
            .then_some(())
    })
    .await;
    k.ok(
        &["apply", "--server-side", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: voice}\n"),
    )
    .await;
    k.ok(
        &[
            "apply",
            "--server-side",
            "-f",
            &repo_path("config/samples/secrets"),
        ],
        None,
    )
    .await;

    let stop = CancellationToken::new();
    let operator = tokio::spawn(grokcast_operator::run::run(
        cp.client().await.expect("client"),
        OperatorConfig {
            settings: Default::default(),
            namespaces: Vec::new(),
            identity: "kubectl-e2e".into(),
            lease: None,
            autoscaler: None,
        },
        grokcast_operator::metrics::Metrics::new().expect("metrics"),
        stop.clone(),
    ));
    k.ok(
        &["apply", "--server-side", "-f", &repo_path("config/samples")],
        None,
    )
    .await;

    // Columns and their values, once the operator reports every object Ready.
    let out = grokcast_e2e::eventually("everything Ready in kubectl get", limit, poll, || async {
        let out = k
            .ok(&["get", "voiceagents,modelpools", "-n", "voice"], None)
            .await;
        let ready = out.matches("True").count() == 4;
        ready.then_some(out)
    })
    .await;
    eprintln!("kubectl get voiceagents,modelpools -n voice\n{out}");
    let mut sections = out.split("\n\n");
    let agents = table_rows(sections.next().expect("voiceagents"));
    let pools = table_rows(sections.next().expect("modelpools"));
    let headers = |rows: &[std::collections::BTreeMap<String, String>]| {
        let mut h: Vec<String> = rows[0].keys().cloned().collect();
        h.sort();
        h
    };
    assert_eq!(
        headers(&agents),
        ["AGE", "CALLS", "NAME", "P95", "READY", "REPLICAS", "SLO"],
        "{out}"
    );
    assert!(out.starts_with("NAME"), "{out}");
    let first_line = out.lines().next().unwrap_or_default();
    assert_eq!(
        squash(first_line),
        "NAME READY REPLICAS CALLS P95 SLO AGE",
        "{out}"
    );
    let agent = &agents[0];
    assert_eq!(agent["NAME"], "voiceagent.grokcast.io/receptionist");
    assert_eq!(agent["READY"], "True");
    assert_eq!(agent["REPLICAS"], "2");
    assert_eq!(agent["SLO"], "800");
    assert!(agent["AGE"].ends_with('s'), "{out}");
    assert_eq!(
        headers(&pools),
        [
            "AGE", "ENGINE", "GPUS", "MODEL", "NAME", "READY", "REPLICAS"
        ],
        "{out}"
    );
    let gemma = pools
        .iter()
        .find(|p| p["NAME"] == "modelpool.grokcast.io/gemma-27b")
        .expect("gemma row");
    assert_eq!(gemma["ENGINE"], "vllm");
    assert_eq!(gemma["MODEL"], "google/gemma-3-27b-it");
    assert_eq!(gemma["READY"], "True");
    assert_eq!(gemma["REPLICAS"], "1");
    assert_eq!(gemma["GPUS"], "1");

    // The category lists both kinds; the short name resolves through discovery.
    let all = k.ok(&["get", "grokcast", "-n", "voice"], None).await;
    for name in [
        "voiceagent.grokcast.io/receptionist",
        "modelpool.grokcast.io/gemma-27b",
        "modelpool.grokcast.io/whisper-v3",
        "modelpool.grokcast.io/csm-1b",
    ] {
        assert!(all.contains(name), "{name} missing from:\n{all}");
    }
    let short = k.ok(&["get", "va", "-n", "voice"], None).await;
    assert_eq!(
        squash(short.lines().next().unwrap_or_default()),
        "NAME READY REPLICAS CALLS P95 SLO AGE"
    );
    assert!(short.contains("receptionist"), "{short}");

    // describe: the conditions from status and the operator's Event.
    let described =
        grokcast_e2e::eventually("the operator's Event in describe", limit, poll, || async {
            let out = k
                .ok(
                    &["describe", "voiceagent", "receptionist", "-n", "voice"],
                    None,
                )
                .await;
            let events = out.split("\nEvents:\n").nth(1).unwrap_or_default();
            let ours = events.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&"Normal")
                    && cells.get(1) == Some(&"Available")
                    && cells.get(3) == Some(&grokcast_crds::OPERATOR_FIELD_MANAGER)
                    && cells.get(4) == Some(&"Ready")
            });
            ours.then_some(out)
        })
        .await;
    eprintln!("kubectl describe voiceagent receptionist -n voice\n{described}");
    let conditions = described
        .split("  Conditions:\n")
        .nth(1)
        .expect("a Conditions section");
    assert!(
        conditions.lines().any(|l| squash(l) == "Type: Ready"),
        "{described}"
    );
    assert!(
        conditions.lines().any(|l| squash(l) == "Reason: Available"),
        "{described}"
    );
    let events = described
        .split("\nEvents:\n")
        .nth(1)
        .expect("an Events section");
    assert_eq!(
        squash(events.lines().next().unwrap_or_default()),
        "Type Reason Age From Message",
        "{described}"
    );

    // explain: the CRD's own field docs.
    let explained = k.ok(&["explain", "voiceagent.spec.slo"], None).await;
    eprintln!("kubectl explain voiceagent.spec.slo\n{explained}");
    assert!(explained.contains("KIND:       VoiceAgent"), "{explained}");
    assert!(explained.contains("FIELD: slo <Object>"), "{explained}");
    for pointer in [
        "properties/spec/properties/slo",
        "properties/spec/properties/slo/properties/turnLatencyP95Ms",
    ] {
        let doc = crd_description("voiceagents.grokcast.io.yaml", pointer);
        assert!(
            squash(&explained).contains(&squash(&doc)),
            "{doc:?} missing from:\n{explained}"
        );
    }
    let recursive = k
        .ok(&["explain", "modelpool.spec", "--recursive"], None)
        .await;
    for field in [
        "engine\t<string> -required-",
        "gpu\t<Object>",
        "targetLatencyMs\t<integer>",
        "model\t<string> -required-",
    ] {
        assert!(
            recursive.lines().any(|l| l.trim() == field),
            "{field:?} missing from:\n{recursive}"
        );
    }

    stop.cancel();
    let _ = tokio::time::timeout(limit, operator).await;
    cp.shutdown().await;
}

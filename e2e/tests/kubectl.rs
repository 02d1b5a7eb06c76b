//! Real kubectl (the pinned build from `e2e/cluster/build.sh`) against the operator's work on
//! the samples in the test cluster: what a platform team sees.

use std::path::PathBuf;
use std::time::Duration;

use grokcast_e2e::cluster::{Cluster, binary};
use grokcast_e2e::project::Project;

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
    fn new(cluster: &Cluster, cache: PathBuf) -> Self {
        Self {
            kubeconfig: cluster.kubeconfig_path().to_path_buf(),
            cache,
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        use tokio::io::AsyncWriteExt;
        // kubectl is built by scripts/install.sh: missing is a failure, never a skip.
        let mut cmd = tokio::process::Command::new(binary("kubectl").expect("kubectl built"));
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

/// The sample manifests in `dir` with their namespace changed to `ns`.
fn samples_in(dir: &str, ns: &str) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path(dir))
        .expect("samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("sample");
        out.push_str(&text.replace("namespace: voice", &format!("namespace: {ns}")));
        out.push_str("\n---\n");
    }
    out
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
    let limit = Duration::from_secs(30);
    let poll = Duration::from_millis(200);
    grokcast_operator::run::install_crypto_provider();
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::shared(env!("CARGO_BIN_EXE_grokcast-e2e").as_ref())
    })
    .await
    .expect("attach")
    .expect("test cluster");
    // The CRDs, a namespace with the samples' Secrets, the operator's chart identity.
    let p = Project::start(cluster, "kubectl", limit)
        .await
        .expect("project installed");
    let ns = p.ns().to_owned();
    let k = Kubectl::new(cluster, cluster.dir().join(format!("kubectl-cache-{ns}")));
    // What a user applies: the CRD YAML, as kubectl would, taking over from the harness.
    k.ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &repo_path("crds/yaml"),
        ],
        None,
    )
    .await;

    let stop = CancellationToken::new();
    let operator = tokio::spawn(grokcast_operator::run::run(
        p.operator.client.clone(),
        OperatorConfig {
            settings: Default::default(),
            namespaces: vec![ns.clone()],
            identity: "kubectl-e2e".into(),
            lease: None,
            autoscaler: None,
        },
        grokcast_operator::metrics::Metrics::new().expect("metrics"),
        stop.clone(),
    ));
    k.ok(
        &["apply", "--server-side", "-f", "-"],
        Some(&samples_in("config/samples", &ns)),
    )
    .await;

    // Columns and their values, once the operator reports every object Ready.
    let out = grokcast_e2e::eventually("everything Ready in kubectl get", limit, poll, || async {
        let out = k
            .ok(&["get", "voiceagents,modelpools", "-n", &ns], None)
            .await;
        let ready = out.matches("True").count() == 4;
        ready.then_some(out)
    })
    .await;
    eprintln!("kubectl get voiceagents,modelpools -n {ns}\n{out}");
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
    let all = k.ok(&["get", "grokcast", "-n", &ns], None).await;
    for name in [
        "voiceagent.grokcast.io/receptionist",
        "modelpool.grokcast.io/gemma-27b",
        "modelpool.grokcast.io/whisper-v3",
        "modelpool.grokcast.io/csm-1b",
    ] {
        assert!(all.contains(name), "{name} missing from:\n{all}");
    }
    let short = k.ok(&["get", "va", "-n", &ns], None).await;
    assert_eq!(
        squash(short.lines().next().unwrap_or_default()),
        "NAME READY REPLICAS CALLS P95 SLO AGE"
    );
    assert!(short.contains("receptionist"), "{short}");

    // describe: the conditions from status and the operator's Event.
    let described =
        grokcast_e2e::eventually("the operator's Event in describe", limit, poll, || async {
            let out = k
                .ok(&["describe", "voiceagent", "receptionist", "-n", &ns], None)
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
    eprintln!("kubectl describe voiceagent receptionist -n {ns}\n{described}");
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
}

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

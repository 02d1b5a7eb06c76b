//! docs/quickstart.md's "A local cluster without Docker", run as written: the section's shell
//! blocks, in order, against this binary's own test cluster (the cluster the first block
//! starts). A test binary of its own, because the documented operator watches every
//! namespace.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use grokcast_e2e::cluster::{Cluster, binary};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell blocks of the quickstart's section `heading`.
fn section_blocks(heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("docs/quickstart.md")).unwrap();
    let start = text.find(heading).expect("the section");
    let rest = &text[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section
        .split("```bash\n")
        .skip(1)
        .map(|b| b[..b.find("```").unwrap()].to_owned())
        .collect()
}

/// A bash running one documented block with the cluster's KUBECONFIG and the pinned kubectl
/// and helm first on PATH, as the section tells a reader to set up.
fn bash(cluster: &Cluster, block: &str) -> Command {
    let kubectl_dir = binary("kubectl").unwrap().parent().unwrap().to_owned();
    let helm_dir = binary("helm").unwrap().parent().unwrap().to_owned();
    let path = std::env::join_paths([kubectl_dir, helm_dir].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let home = cluster.dir().join("quickstart-home");
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", block])
        .current_dir(repo())
        .env("PATH", path)
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_quickstart_runs_as_written() {
    let blocks = section_blocks("## A local cluster without Docker");
    assert_eq!(blocks.len(), 4, "up, install, operator, check: {blocks:?}");
    assert!(
        blocks[0].contains("grokcast-e2e -- cluster up"),
        "{}",
        blocks[0]
    );
    // Block 1 starts a cluster: this binary's shared one is that cluster.
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::shared(env!("CARGO_BIN_EXE_grokcast-e2e").as_ref())
    })
    .await
    .unwrap()
    .expect("test cluster");

    let out = bash(cluster, &blocks[1]).output().unwrap();
    assert!(
        out.status.success(),
        "install block failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The operator block runs until stopped, as in a terminal of its own.
    let mut operator = bash(cluster, &blocks[2])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let mut last = String::new();
    let ready = grokcast_e2e::eventually(
        "every sample Ready in kubectl get",
        // The documented `cargo run` may build the operator first (its own feature set).
        Duration::from_secs(600),
        Duration::from_secs(1),
        || {
            let out = bash(cluster, &blocks[3]).output().unwrap();
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            let rows: Vec<&str> = last
                .lines()
                .filter(|l| {
                    l.contains("modelpool.grokcast.io/") || l.contains("voiceagent.grokcast.io/")
                })
                .collect();
            let done = out.status.success()
                && rows.len() == 4
                && rows
                    .iter()
                    .all(|r| r.split_whitespace().any(|c| c == "True"));
            std::future::ready(done.then(|| last.clone()))
        },
    )
    .await;
    eprintln!("{ready}");
    // The pods are kwok's, on the nodes the scheduler chose: GPU pools on A100 nodes.
    assert!(ready.contains("kwok-a100-80gb-"), "{ready}");
    assert!(ready.contains("receptionist-agent-"), "{ready}");
    let _ = operator.kill();
    let _ = operator.wait();
}

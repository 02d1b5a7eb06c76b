//! The pure pipeline steps: YAML in, objects out. No API server.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use grokcast_crds::{Engine, ModelPool, Role, VoiceAgent, condition};
use grokcast_operator::children::Child;
use grokcast_operator::settings::BuildSettings;
use grokcast_operator::voice_agent::{PoolLookup, Problem, SecretLookup};
use grokcast_operator::{meta, model_pool, render, voice_agent};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

fn with_uid<K: kube::Resource>(mut obj: K) -> K {
    obj.meta_mut().uid = Some("5f1c3a5e-0000-4000-8000-000000000001".into());
    obj
}

fn sample<K: serde::de::DeserializeOwned + kube::Resource>(file: &str) -> K {
    let text = std::fs::read_to_string(samples_dir().join(file)).expect("sample");
    with_uid(serde_yaml::from_str(&text).expect("parse sample"))
}

fn pool_yaml(yaml: &str) -> ModelPool {
    with_uid(serde_yaml::from_str(yaml).expect("pool yaml"))
}

fn agent_yaml(yaml: &str) -> VoiceAgent {
    with_uid(serde_yaml::from_str(yaml).expect("agent yaml"))
}

fn deployment(children: &[Child]) -> &Deployment {
    children
        .iter()
        .find_map(|c| match c {
            Child::Deployment(d) => Some(d.as_ref()),
            _ => None,
        })
        .expect("a Deployment")
}

/// The Secret (name, key) an environment variable is read from, if it is.
fn secret_of(env: &[k8s_openapi::api::core::v1::EnvVar], var: &str) -> Option<(String, String)> {
    let sel = env
        .iter()
        .find(|e| e.name == var)?
        .value_from
        .as_ref()?
        .secret_key_ref
        .as_ref()?;
    Some((sel.name.clone(), sel.key.clone()))
}

fn config_map(children: &[Child]) -> &ConfigMap {
    children
        .iter()
        .find_map(|c| match c {
            Child::ConfigMap(d) => Some(d),
            _ => None,
        })
        .expect("a ConfigMap")
}

/// The (name, port) pairs of the children's Service.
fn service_ports(children: &[Child]) -> Vec<(String, i32)> {
    let service = children
        .iter()
        .find_map(|c| match c {
            Child::Service(s) => Some(s),
            _ => None,
        })
        .expect("a Service");
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .expect("ports")
        .iter()
        .map(|p| (p.name.clone().unwrap_or_default(), p.port))
        .collect()
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container(d: &Deployment) -> &Container {
    &pod(d).containers[0]
}

fn build_pool(pool: &ModelPool) -> Vec<Child> {
    build_pool_with(pool, &BuildSettings::default())
}

fn build_pool_with(pool: &ModelPool, settings: &BuildSettings) -> Vec<Child> {
    let valid = model_pool::validate(pool, settings).expect("valid pool");
    model_pool::build(&valid, settings)
}

fn pools() -> Vec<ModelPool> {
    vec![
        sample("gemma-27b.yaml"),
        sample("whisper.yaml"),
        sample("csm.yaml"),
    ]
}

/// How the dereference step finds a ModelPool by name among `pools`.
fn pool_lookup<'a>(pools: &'a [ModelPool]) -> impl Fn(&str) -> PoolLookup<'a> + Copy + 'a {
    move |name| {
        pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .map_or(PoolLookup::Missing, PoolLookup::Found)
    }
}

fn build_agent(
    agent: &VoiceAgent,
    pools: &[ModelPool],
    settings: &BuildSettings,
) -> Result<Vec<Child>, Problem> {
    let lookup = pool_lookup(pools);
    let valid = voice_agent::validate(agent, lookup, |_| SecretLookup::Present)?;
    Ok(voice_agent::build(&valid, settings))
}

fn args_pair<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[test]
fn the_csm_sample_runs_grokcast_serve_with_csm_on_the_directory_its_preload_assembles() {
    let children = build_pool(&sample("csm.yaml"));
    let d = deployment(&children);
    let c = container(d);
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/grokcast/grokcast-csm:0.1.0"),
        "the image docker/csm.Dockerfile builds"
    );
    let args = c.args.clone().unwrap();
    assert_eq!(args_pair(&args, "--engine"), Some("csm"));
    assert_eq!(args_pair(&args, "--role"), Some("tts"));
    assert_eq!(args_pair(&args, "--csm-model-dir"), Some("/models/csm"));
    assert_eq!(args_pair(&args, "--tts-model"), Some("sesame/csm-1b"));
    assert_eq!(args_pair(&args, "--listen"), Some("0.0.0.0:8000"));
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    // grokcast-serve runs as 65532, so the pod may say so (Pod Security `restricted`).
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65_532));
    let job = children
        .iter()
        .find_map(|c| match c {
            Child::Job(j) => Some(j),
            _ => None,
        })
        .expect("the sample preloads");
    let script = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .command
        .as_ref()
        .unwrap()[2]
        .clone();
    for part in [
        "/models/csm",
        "config.json",
        "model.safetensors",
        "meta-llama/Llama-3.2-1B",
        "tokenizer.json",
        "kyutai/mimi",
        "mimi.safetensors",
    ] {
        assert!(
            script.contains(part),
            "{part} not in the preload:\n{script}"
        );
    }
    // The script is Python the preload image runs: it must at least parse.
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; compile(sys.argv[1], 'preload', 'exec')",
            &script,
        ])
        .output()
        .expect("python3");
    assert!(
        parsed.status.success(),
        "{}\n{script}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

#[test]
fn a_csm_pools_voices_config_map_is_mounted_read_only_for_the_server() {
    let text = std::fs::read_to_string(samples_dir().join("csm.yaml"))
        .unwrap()
        .replace(
            "  model: sesame/csm-1b",
            "  model: sesame/csm-1b\n  voicesConfigMap: csm-voices",
        );
    let children = build_pool(&pool_yaml(&text));
    let d = deployment(&children);
    let c = container(d);
    let args = c.args.clone().unwrap();
    assert_eq!(
        args_pair(&args, "--csm-voices-dir"),
        Some("/etc/grokcast/voices")
    );
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/grokcast/voices")
        .expect("voices mounted");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod(d)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let cm = volume.config_map.as_ref().unwrap();
    assert_eq!(cm.name, "csm-voices");
    assert_eq!(cm.optional, Some(false));

    // Without voices: no mount, no flag.
    let plain = build_pool(&sample("csm.yaml"));
    let args = container(deployment(&plain)).args.clone().unwrap();
    assert_eq!(args_pair(&args, "--csm-voices-dir"), None);

    // Voices mean nothing to other engines: refused, not ignored.
    let vllm = pool_yaml(
        &text
            .replace("engine: csm", "engine: vllm")
            .replace("role: tts", ""),
    );
    let err = model_pool::validate(&vllm, &BuildSettings::default()).unwrap_err();
    assert!(err.to_string().contains("voicesConfigMap"), "{err}");
}

#[test]
fn whisper_pools_keep_their_model_loaded() {
    // The sample serves Whisper on vLLM, which loads the model before /health answers and
    // never unloads it; it refuses a context longer than Whisper's 448 positions, so none is
    // forced on it, and it runs in the float16 the checkpoint is published in.
    let sample: ModelPool = sample("whisper.yaml");
    assert_eq!(sample.spec.engine, Engine::Vllm);
    assert_eq!(sample.spec.resolved_role(), Some(Role::Stt));
    let children = build_pool(&sample);
    let c = container(deployment(&children));
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "openai/whisper-large-v3-turbo");
    assert_eq!(args_pair(&args, "--max-model-len"), None, "{args:?}");
    assert_eq!(args_pair(&args, "--dtype"), Some("auto"));
    assert_eq!(args_pair(&args, "--gpu-memory-utilization"), Some("0.2"));
    assert!(!args.iter().any(|a| a == "--limit-mm-per-prompt"));
    // Ready means loaded: the readiness probe is vLLM's /health, which answers only once the
    // engine (weights, cache, CUDA graphs) is up.
    let ready = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref());
    assert_eq!(ready.and_then(|g| g.path.as_deref()), Some("/health"));

    // speaches: its default STT_MODEL_TTL unloads an idle model after 300 s.
    let speaches = pool_yaml(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: whisper-speaches, namespace: voice}\n\
         spec: {engine: whisper, model: Systran/faster-whisper-large-v3, gpu: {count: 1}}\n",
    );
    let children = build_pool(&speaches);
    let d = deployment(&children);
    let env: Vec<(String, String)> = container(d)
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert!(
        env.contains(&("STT_MODEL_TTL".into(), "-1".into())),
        "{env:?}"
    );
    // speaches runs as uid 1000: the cache volume is group-owned by it so it can write there.
    let security = pod(d).security_context.as_ref().unwrap();
    assert_eq!(security.fs_group, Some(1000));
    assert_eq!(security.run_as_user, Some(1000));
}

#[test]
fn gemma_sample_runs_quantized_gemma_on_one_a100_with_vllm() {
    let children = build_pool(&sample("gemma-27b.yaml"));
    let d = deployment(&children);
    let c = container(d);
    assert_eq!(
        c.image.as_deref(),
        Some(BuildSettings::default().vllm_image.as_str())
    );
    assert_eq!(
        c.command.as_deref(),
        Some(&["vllm".to_string(), "serve".to_string()][..])
    );
    let args = c.args.as_ref().unwrap();
    assert_eq!(
        args[0], "ISTA-DASLab/gemma-3-27b-it-GPTQ-4b-128g",
        "int4 loads the W4A16 variant"
    );
    assert_eq!(
        args_pair(args, "--served-model-name"),
        Some("google/gemma-3-27b-it")
    );
    assert_eq!(args_pair(args, "--dtype"), Some("bfloat16"));
    assert_eq!(args_pair(args, "--max-model-len"), Some("8192"));
    assert_eq!(args_pair(args, "--gpu-memory-utilization"), Some("0.85"));
    assert_eq!(args_pair(args, "--port"), Some("8000"));
    assert!(
        !args.contains(&"--tensor-parallel-size".to_string()),
        "one GPU needs no TP flag"
    );

    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(res.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(
        res.requests.as_ref().unwrap()["memory"].0,
        "32Gi",
        "spec resources kept"
    );
    let p = pod(d);
    assert_eq!(
        p.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"],
        "NVIDIA-A100-SXM4-80GB"
    );
    assert!(
        p.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
                && t.effect.as_deref() == Some("NoSchedule"))
    );
    let shm = p
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "dshm")
        .unwrap();
    assert_eq!(
        shm.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    assert!(
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/dev/shm")
    );
    let hf = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "HF_TOKEN")
        .unwrap();
    let sel = hf
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("hf", "token"));
    assert!(
        hf.value.is_none(),
        "the token never appears in the manifest"
    );

    // Model loading takes minutes: startup allows long, liveness only starts after it.
    let startup = c.startup_probe.as_ref().unwrap();
    assert!(startup.period_seconds.unwrap() * startup.failure_threshold.unwrap() >= 1800);
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/health")
    );

    let kinds: Vec<&str> = children.iter().map(Child::kind).collect();
    assert_eq!(
        kinds,
        [
            "PersistentVolumeClaim",
            "Job",
            "Deployment",
            "Service",
            "PodDisruptionBudget"
        ]
    );
    for child in &children {
        let y = serde_yaml::to_string(child).unwrap();
        assert!(
            y.contains("controller: true"),
            "{} lacks a controller owner reference",
            child.kind()
        );
        assert!(y.contains("app.kubernetes.io/managed-by: grokcast-operator"));
    }
}

#[test]
fn tensor_parallel_and_fp8_follow_the_spec() {
    let pool = pool_yaml(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: big, namespace: ns}\n\
         spec: {engine: vllm, model: meta-llama/Llama-3.1-70B-Instruct, quantization: fp8, gpu: {count: 2}}\n",
    );
    let children = build_pool(&pool);
    let args = container(deployment(&children)).args.clone().unwrap();
    assert_eq!(
        args[0], "meta-llama/Llama-3.1-70B-Instruct",
        "no known variant: the model itself"
    );
    assert_eq!(args_pair(&args, "--tensor-parallel-size"), Some("2"));
    assert_eq!(args_pair(&args, "--quantization"), Some("fp8"));
    assert!(
        !args.iter().any(|a| a == "--limit-mm-per-prompt"),
        "only Gemma 3 is multimodal here"
    );
}

#[test]
fn cpu_grokcast_pool_requests_no_gpu_and_uses_its_own_probes() {
    let pool = pool_yaml(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: gemma-cpu, namespace: voice}\n\
         spec: {engine: grokcast, role: llm, model: gemma-3-270m, gpu: {count: 0}}\n",
    );
    let children = build_pool(&pool);
    let d = deployment(&children);
    let c = container(d);
    assert_eq!(
        c.args.as_ref().unwrap(),
        &["--role", "llm", "--listen", "0.0.0.0:8000"]
    );
    assert!(
        c.resources.as_ref().unwrap().limits.is_none(),
        "no nvidia.com/gpu"
    );
    assert!(pod(d).tolerations.is_none());
    assert!(pod(d).node_selector.is_none());
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    let kinds: Vec<&str> = children.iter().map(Child::kind).collect();
    assert_eq!(
        kinds,
        ["Deployment", "Service", "PodDisruptionBudget"],
        "no cache, no PVC or Job"
    );
}

#[test]
fn custom_engine_uses_spec_image_port_and_tcp_probes() {
    let pool = pool_yaml(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: tts, namespace: ns}\n\
         spec: {engine: custom, role: tts, model: kokoro, image: example.com/kokoro:1, port: 8880, args: [--fast], gpu: {count: 0}}\n",
    );
    let children = build_pool(&pool);
    let c = container(deployment(&children));
    assert_eq!(c.image.as_deref(), Some("example.com/kokoro:1"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8880);
    assert_eq!(c.args.as_ref().unwrap(), &["--fast"]);
    assert!(c.readiness_probe.as_ref().unwrap().tcp_socket.is_some());
}

#[test]
fn invalid_pools_get_clear_messages() {
    let settings = BuildSettings::default();
    let cases = [
        (
            "{engine: custom, role: llm, model: m}",
            "engine custom needs image and port",
        ),
        (
            "{engine: grokcast, model: m, gpu: {count: 0}}",
            "engine grokcast needs role (stt, llm or tts)",
        ),
        (
            "{engine: whisper, role: llm, model: m}",
            "engine whisper cannot serve role llm",
        ),
        (
            "{engine: csm, model: m, quantization: int4}",
            "quantization is only derived for engine vllm",
        ),
        (
            "{engine: vllm, model: m, gpu: {count: 0}}",
            "engine vllm needs at least one GPU",
        ),
        (
            "{engine: vllm, model: m, autoscaling: {minReplicas: 5, maxReplicas: 2}}",
            "autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (2)",
        ),
    ];
    for (spec, want) in cases {
        let pool = pool_yaml(&format!(
            "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {{name: p, namespace: ns}}\nspec: {spec}\n"
        ));
        let err = model_pool::validate(&pool, &settings)
            .expect_err(spec)
            .to_string();
        assert!(err.contains(want), "{spec}: got {err:?}, want {want:?}");
    }
    let long = "p".repeat(meta::MAX_NAME_LEN + 1);
    let pool = pool_yaml(&format!(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {{name: {long}, namespace: ns}}\nspec: {{engine: vllm, model: m}}\n"
    ));
    assert!(
        model_pool::validate(&pool, &settings)
            .unwrap_err()
            .to_string()
            .contains("at most 45")
    );
}

#[test]
fn agent_pods_are_locked_down_and_drain_calls() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let children = build_agent(&agent, &pools(), &BuildSettings::default()).unwrap();
    let d = deployment(&children);
    let p = pod(d);
    let c = container(d);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let psc = p.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(p.automount_service_account_token, Some(false));
    assert!(c.lifecycle.as_ref().unwrap().pre_stop.is_some());
    assert!(
        p.termination_grace_period_seconds.unwrap() > 600,
        "grace period must outlast drainTimeoutSeconds (600)"
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
    assert_eq!(
        secret_of(c.env.as_deref().unwrap(), "GROKCAST_TWILIO_AUTH_TOKEN"),
        Some(("twilio".into(), "authToken".into()))
    );
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    let kinds: Vec<&str> = children.iter().map(Child::kind).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    );
}

#[test]
fn agent_config_resolves_pool_endpoints_and_models() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let children = build_agent(&agent, &pools(), &BuildSettings::default()).unwrap();
    let yaml = &config_map(&children).data.as_ref().unwrap()["agent.yaml"];
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(v["voiceAgent"].as_str(), Some("receptionist"));
    assert_eq!(v["namespace"].as_str(), Some("voice"));
    assert_eq!(v["publicUrl"].as_str(), Some("https://voice.example.com"));
    assert_eq!(
        v["llm"]["url"].as_str(),
        Some("http://gemma-27b.voice.svc:8000/v1")
    );
    assert_eq!(v["llm"]["model"].as_str(), Some("google/gemma-3-27b-it"));
    assert_eq!(v["llm"]["backend"].as_str(), Some("openai"));
    assert_eq!(
        v["stt"]["url"].as_str(),
        Some("http://whisper-v3.voice.svc:8000/v1")
    );
    assert_eq!(v["stt"]["language"].as_str(), Some("en"));
    assert_eq!(
        v["tts"]["url"].as_str(),
        Some("http://csm-1b.voice.svc:8000/v1")
    );
    // CSM streams raw PCM at 24 kHz and does not say so.
    assert_eq!(v["tts"]["responseFormat"].as_str(), Some("pcm"));
    assert_eq!(v["tts"]["sampleRate"].as_i64(), Some(24_000));
    assert_eq!(v["turnTaking"]["endOfTurnSilenceMs"].as_i64(), Some(300));
    // Without a model, silence alone ends turns, as before the field existed.
    assert_eq!(v["turnTaking"]["endOfTurnModel"].as_str(), Some("none"));
    assert_eq!(v["turnTaking"]["speculativeReplies"].as_bool(), Some(false));
    assert_eq!(
        v["turnTaking"]["falseInterruptionResumeMs"].as_i64(),
        Some(1500)
    );
    let backchannels = v["turnTaking"]["backchannels"].as_sequence().unwrap();
    assert!(backchannels.iter().any(|w| w.as_str() == Some("uh-huh")));
    // With streaming STT, only words interrupt the agent: the agent reads both.
    assert_eq!(v["turnTaking"]["minInterruptionWords"].as_i64(), Some(1));
    assert_eq!(
        v["turnTaking"]["maxInterruptionWaitMs"].as_i64(),
        Some(1000)
    );
    assert_eq!(
        v["turnTaking"]["llmEndOfTurnThreshold"].as_f64(),
        Some(0.05)
    );
    assert_eq!(v["maxCalls"].as_i64(), Some(50));
    assert!(
        !yaml.contains("REPLACE"),
        "no secret material in the ConfigMap"
    );
}

/// A grokcast STT pool serving Riva's streaming recognition (`protocol: riva`).
fn riva_pool(extra: &str) -> ModelPool {
    pool_yaml(&format!(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {{name: whisper-v3, namespace: voice}}\n\
         spec: {{engine: grokcast, role: stt, model: whisper-1, protocol: riva, gpu: {{count: 0}}{extra}}}\n"
    ))
}

#[test]
fn a_riva_pool_serves_grpc_beside_http_and_agents_stream_to_it() {
    let pool = riva_pool("");
    let children = build_pool(&pool);
    let c = container(deployment(&children));
    assert_eq!(
        args_pair(c.args.as_ref().unwrap(), "--grpc-listen"),
        Some("0.0.0.0:50051")
    );
    let ports: Vec<(String, i32)> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(ports, [("http".into(), 8000), ("grpc".into(), 50051)]);
    assert_eq!(
        service_ports(&children),
        [("http".into(), 8000), ("grpc".into(), 50051)]
    );

    // The agent streams to the pool unless told not to; batch requests stay on HTTP.
    let mut pools = pools();
    pools.retain(|p| p.metadata.name.as_deref() != Some("whisper-v3"));
    pools.push(riva_pool(", grpcPort: 9000"));
    let agent: VoiceAgent = sample("receptionist.yaml");
    let stt = |agent: &VoiceAgent, pools: &[ModelPool]| {
        let children = build_agent(agent, pools, &BuildSettings::default())?;
        let yaml = &config_map(&children).data.as_ref().unwrap()["agent.yaml"];
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        Ok::<_, Problem>(v["stt"].clone())
    };
    let v = stt(&agent, &pools).unwrap();
    assert_eq!(
        v["streamingUrl"].as_str(),
        Some("http://whisper-v3.voice.svc:9000")
    );
    assert_eq!(
        v["url"].as_str(),
        Some("http://whisper-v3.voice.svc:8000/v1")
    );
    let mut batch = agent.clone();
    batch.spec.stt.protocol = Some(grokcast_crds::SttProtocol::Openai);
    assert!(stt(&batch, &pools).unwrap()["streamingUrl"].is_null());
    // An OpenAI-only pool: no streaming by default, a clear error when it is demanded.
    assert!(stt(&agent, &self::pools()).unwrap()["streamingUrl"].is_null());
    let mut riva = agent.clone();
    riva.spec.stt.protocol = Some(grokcast_crds::SttProtocol::Riva);
    let err = stt(&riva, &self::pools()).unwrap_err().to_string();
    assert!(
        err.contains("whisper-v3") && err.contains("protocol"),
        "{err}"
    );
}

#[test]
fn riva_is_only_for_speech_recognition_pools() {
    let settings = BuildSettings::default();
    for (spec, want) in [
        (
            "{engine: vllm, model: m, protocol: riva}",
            "protocol riva is streaming speech recognition",
        ),
        (
            "{engine: grokcast, role: llm, model: m, protocol: riva, gpu: {count: 0}}",
            "protocol riva is streaming speech recognition",
        ),
        (
            "{engine: grokcast, role: stt, model: m, grpcPort: 9000, gpu: {count: 0}}",
            "grpcPort 9000 needs protocol riva",
        ),
        (
            "{engine: grokcast, role: stt, model: m, protocol: riva, grpcPort: 8000, gpu: {count: 0}}",
            "a port of its own",
        ),
        (
            "{engine: custom, role: stt, model: m, image: riva:1, port: 50051, protocol: riva, gpu: {count: 0}}",
            "grpcPort 50051 needs protocol riva and a port of its own",
        ),
    ] {
        let pool = pool_yaml(&format!(
            "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {{name: p, namespace: ns}}\nspec: {spec}\n"
        ));
        let err = model_pool::validate(&pool, &settings)
            .expect_err(spec)
            .to_string();
        assert!(err.contains(want), "{spec}: got {err:?}, want {want:?}");
    }
}

#[test]
fn the_end_of_turn_model_and_its_pauses_reach_the_agent() {
    let text = std::fs::read_to_string(samples_dir().join("receptionist.yaml")).unwrap();
    let text = text.replace(
        "  turnTaking:\n",
        "  turnTaking:\n    endOfTurnModel: smart-turn\n    minEndOfTurnSilenceMs: 250\n    maxEndOfTurnSilenceMs: 1800\n    speculativeReplies: true\n    preemptiveTts: true\n",
    );
    let agent = agent_yaml(&text);
    let children = build_agent(&agent, &pools(), &BuildSettings::default()).unwrap();
    let yaml = &config_map(&children).data.as_ref().unwrap()["agent.yaml"];
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let t = &v["turnTaking"];
    assert_eq!(t["endOfTurnModel"].as_str(), Some("smart-turn"), "{yaml}");
    assert_eq!(t["minEndOfTurnSilenceMs"].as_i64(), Some(250));
    assert_eq!(t["maxEndOfTurnSilenceMs"].as_i64(), Some(1800));
    assert_eq!(t["speculativeReplies"].as_bool(), Some(true));
    assert_eq!(t["preemptiveTts"].as_bool(), Some(true));

    // The LLM pool as the judge, with its own threshold.
    let llm = text.replace(
        "endOfTurnModel: smart-turn\n",
        "endOfTurnModel: llm\n    llmEndOfTurnThreshold: 0.35\n",
    );
    let children = build_agent(&agent_yaml(&llm), &pools(), &BuildSettings::default()).unwrap();
    let yaml = &config_map(&children).data.as_ref().unwrap()["agent.yaml"];
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(
        v["turnTaking"]["endOfTurnModel"].as_str(),
        Some("llm"),
        "{yaml}"
    );
    assert_eq!(
        v["turnTaking"]["llmEndOfTurnThreshold"].as_f64(),
        Some(0.35),
        "{yaml}"
    );
}

#[test]
fn agent_config_names_the_speech_format_of_each_tts_engine() {
    let receptionist = std::fs::read_to_string(samples_dir().join("receptionist.yaml")).unwrap();
    let mut pools = pools();
    pools.push(pool_yaml(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: piper, namespace: voice}\n\
         spec: {engine: grokcast, role: tts, model: tts-1, gpu: {count: 0}}\n",
    ));
    pools.push(pool_yaml(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: kokoro, namespace: voice}\n\
         spec: {engine: custom, role: tts, model: kokoro, image: example.com/kokoro:1, port: 8880, gpu: {count: 0}}\n",
    ));
    let tts = |pool: &str| {
        let agent = agent_yaml(
            &receptionist.replace("modelPoolRef: csm-1b", &format!("modelPoolRef: {pool}")),
        );
        let children = build_agent(&agent, &pools, &BuildSettings::default()).unwrap();
        let v: serde_yaml::Value =
            serde_yaml::from_str(&config_map(&children).data.as_ref().unwrap()["agent.yaml"])
                .unwrap();
        let field = |k: &str| serde_yaml::to_string(&v["tts"][k]).unwrap();
        (field("responseFormat"), field("sampleRate"), field("voice"))
    };
    // grokcast-serve streams pcm and gives its rate in x-sample-rate: no rate to assume.
    assert_eq!(
        tts("piper"),
        ("pcm\n".into(), "null\n".into(), "null\n".into())
    );
    // CSM's voices are its speakers: with none named, speaker 0 (never the agent's
    // OpenAI-style default, which the CSM server would refuse).
    assert_eq!(
        tts("csm-1b"),
        ("pcm\n".into(), "24000\n".into(), "'0'\n".into())
    );
    // Nothing is known of a custom server: the agent's defaults apply.
    assert_eq!(
        tts("kokoro"),
        ("null\n".into(), "null\n".into(), "null\n".into())
    );
}

#[test]
fn external_endpoint_needs_a_model_name() {
    let yaml = std::fs::read_to_string(samples_dir().join("receptionist.yaml"))
        .unwrap()
        .replace(
            "modelPoolRef: gemma-27b",
            "endpoint: https://llm.example.com/v1",
        );
    let agent = agent_yaml(&yaml);
    let err = build_agent(&agent, &pools(), &BuildSettings::default()).unwrap_err();
    assert_eq!(err.to_string(), "llm.model is required with llm.endpoint");
    let agent = agent_yaml(&yaml.replace(
        "endpoint: https://llm.example.com/v1",
        "endpoint: https://llm.example.com/v1/\n    model: gpt-4o-mini",
    ));
    let children = build_agent(&agent, &pools(), &BuildSettings::default()).unwrap();
    let v: serde_yaml::Value =
        serde_yaml::from_str(&config_map(&children).data.as_ref().unwrap()["agent.yaml"]).unwrap();
    assert_eq!(v["llm"]["url"].as_str(), Some("https://llm.example.com/v1"));
    assert_eq!(v["llm"]["model"].as_str(), Some("gpt-4o-mini"));
}

fn config_hash(agent: &VoiceAgent) -> String {
    let children = build_agent(agent, &pools(), &BuildSettings::default()).unwrap();
    deployment(&children)
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[meta::CONFIG_HASH_ANNOTATION]
        .clone()
}

#[test]
fn config_hash_changes_exactly_when_the_config_changes() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let same = config_hash(&agent);
    assert_eq!(same, config_hash(&agent), "building twice is deterministic");
    let mut prompt = agent.clone();
    prompt.spec.persona.system_prompt.push_str(" Be brief.");
    assert_ne!(
        same,
        config_hash(&prompt),
        "a prompt change must roll the pods"
    );
    let mut silence = agent.clone();
    silence.spec.turn_taking.end_of_turn_silence_ms = 400;
    assert_ne!(same, config_hash(&silence));
    let mut replicas = agent.clone();
    replicas.spec.replicas = 7;
    assert_eq!(
        same,
        config_hash(&replicas),
        "scaling must not restart pods"
    );
}

#[test]
fn fields_removed_from_the_spec_disappear_from_children() {
    let yaml = std::fs::read_to_string(samples_dir().join("gemma-27b.yaml")).unwrap();
    let with = yaml.replace(
        "  resources:",
        "  tolerations:\n  - {key: dedicated, operator: Equal, value: voice, effect: NoSchedule}\n  nodeSelector: {pool: voice}\n  resources:",
    );
    let children = build_pool(&pool_yaml(&with));
    let p = pod(deployment(&children));
    assert!(
        p.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("dedicated"))
    );
    assert_eq!(
        p.node_selector
            .as_ref()
            .unwrap()
            .get("pool")
            .map(String::as_str),
        Some("voice")
    );

    let children = build_pool(&pool_yaml(&yaml));
    let p = pod(deployment(&children));
    assert!(
        !p.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("dedicated"))
    );
    assert!(!p.node_selector.as_ref().unwrap().contains_key("pool"));
    // The applied object is the whole desired state: a field missing here is dropped by SSA.
    let y = serde_yaml::to_string(&children[2]).unwrap();
    assert!(!y.contains("dedicated"));

    let without_cache = yaml.replace("  cache:\n    size: 100Gi\n    accessMode: ReadWriteOnce       # ReadWriteMany when replicas run on several nodes\n    preload: true\n", "");
    assert_ne!(
        without_cache, yaml,
        "sample layout changed; update this test"
    );
    let children = build_pool(&pool_yaml(&without_cache));
    let p = pod(deployment(&children));
    let models = p
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "models")
        .unwrap();
    assert!(models.persistent_volume_claim.is_none() && models.empty_dir.is_some());
}

#[test]
fn dangling_and_wrong_role_references_name_the_stage_and_pool() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let only_two: Vec<ModelPool> = pools()
        .into_iter()
        .filter(|p| p.metadata.name.as_deref() != Some("csm-1b"))
        .collect();
    let err = build_agent(&agent, &only_two, &BuildSettings::default()).unwrap_err();
    assert_eq!(err.reason(), condition::reason::MODEL_POOL_NOT_FOUND);
    assert_eq!(
        err.to_string(),
        "tts modelPoolRef \"csm-1b\": ModelPool not found in namespace voice"
    );

    let yaml = std::fs::read_to_string(samples_dir().join("receptionist.yaml"))
        .unwrap()
        .replace("modelPoolRef: csm-1b", "modelPoolRef: gemma-27b");
    let err = build_agent(&agent_yaml(&yaml), &pools(), &BuildSettings::default()).unwrap_err();
    assert_eq!(err.reason(), condition::reason::MODEL_POOL_WRONG_ROLE);
    assert_eq!(
        err.to_string(),
        "tts modelPoolRef \"gemma-27b\": ModelPool serves role llm, tts needs tts"
    );
}

#[test]
fn missing_secret_or_key_blocks_with_its_own_reason() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let p = pools();
    let lookup = pool_lookup(&p);
    let err = voice_agent::validate(&agent, lookup, |_| SecretLookup::Missing).unwrap_err();
    assert_eq!(err.reason(), condition::reason::SECRET_NOT_FOUND);
    let err = voice_agent::validate(&agent, lookup, |_| SecretLookup::KeyMissing).unwrap_err();
    assert_eq!(err.reason(), condition::reason::SECRET_KEY_MISSING);
    assert!(err.to_string().contains("has no key \"authToken\""));
}

#[test]
fn the_playground_reads_its_token_from_its_secret_only_when_enabled() {
    let base = std::fs::read_to_string(samples_dir().join("receptionist.yaml")).unwrap();
    let with = |playground: &str| base.replacen("spec:\n", &format!("spec:\n{playground}"), 1);
    let env_of = |children: &[Child]| {
        deployment(children)
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap()
    };
    let yaml_of =
        |children: &[Child]| config_map(children).data.as_ref().unwrap()["agent.yaml"].clone();

    // Off (the default): no token in the pod, and the agent is told it is off.
    let off = build_agent(&agent_yaml(&base), &pools(), &BuildSettings::default()).unwrap();
    assert!(
        !env_of(&off)
            .iter()
            .any(|e| e.name == "GROKCAST_PLAYGROUND_TOKEN")
    );
    let config: serde_yaml::Value = serde_yaml::from_str(&yaml_of(&off)).unwrap();
    assert_eq!(
        config["playground"]["enabled"],
        serde_yaml::Value::Bool(false)
    );

    // On: the token comes from the named Secret key, never through the ConfigMap.
    let on = with(
        "  playground:\n    enabled: true\n    tokenSecretRef: {name: playground, key: token}\n",
    );
    let children = build_agent(&agent_yaml(&on), &pools(), &BuildSettings::default()).unwrap();
    assert_eq!(
        secret_of(&env_of(&children), "GROKCAST_PLAYGROUND_TOKEN"),
        Some(("playground".into(), "token".into()))
    );
    let config: serde_yaml::Value = serde_yaml::from_str(&yaml_of(&children)).unwrap();
    assert_eq!(
        config["playground"]["enabled"],
        serde_yaml::Value::Bool(true)
    );
    assert!(
        !yaml_of(&children).contains("token"),
        "no token in agent.yaml"
    );

    // A missing playground Secret is named as such; the Twilio one is present.
    let agent = agent_yaml(&on);
    let p = pools();
    let lookup = pool_lookup(&p);
    let secrets = |r: &grokcast_crds::SecretKeyRef| match r.name.as_str() {
        "playground" => SecretLookup::Missing,
        _ => SecretLookup::Present,
    };
    let err = voice_agent::validate(&agent, lookup, secrets).unwrap_err();
    assert_eq!(err.reason(), condition::reason::SECRET_NOT_FOUND);
    assert_eq!(
        err.to_string(),
        "playground.tokenSecretRef: Secret \"playground\" not found"
    );

    // Enabled without a token Secret is refused (as the API server's rule refuses it).
    let bare = with("  playground:\n    enabled: true\n");
    let err = build_agent(&agent_yaml(&bare), &pools(), &BuildSettings::default()).unwrap_err();
    assert_eq!(err.reason(), condition::reason::INVALID_SPEC);
    assert!(err.to_string().contains("tokenSecretRef"), "{err}");
}

#[test]
fn traces_go_where_the_spec_says_and_nowhere_when_it_is_unset() {
    let base = std::fs::read_to_string(samples_dir().join("receptionist.yaml")).unwrap();
    let yaml_of = |spec: &str| {
        let children = build_agent(&agent_yaml(spec), &pools(), &BuildSettings::default()).unwrap();
        let text = config_map(&children).data.as_ref().unwrap()["agent.yaml"].clone();
        serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap()
    };
    // Unset: nothing in agent.yaml, so the agent's own default (no traces) holds.
    assert!(yaml_of(&base).get("tracing").is_none());

    let traced = base.replacen(
        "spec:\n",
        "spec:\n  tracing:\n    otlpEndpoint: http://otel-collector.observability:4317\n    sampleRatio: 0.25\n",
        1,
    );
    let config = yaml_of(&traced);
    assert_eq!(
        config["tracing"]["endpoint"].as_str(),
        Some("http://otel-collector.observability:4317")
    );
    assert_eq!(config["tracing"]["sampleRatio"].as_f64(), Some(0.25));

    // The ratio defaults to every call.
    let all = base.replacen(
        "spec:\n",
        "spec:\n  tracing:\n    otlpEndpoint: https://tempo.example.com\n",
        1,
    );
    assert_eq!(yaml_of(&all)["tracing"]["sampleRatio"].as_f64(), Some(1.0));
}

#[test]
fn invalid_agent_specs_are_flagged() {
    let base = std::fs::read_to_string(samples_dir().join("receptionist.yaml")).unwrap();
    let cases = [
        (
            "minReplicas: 2",
            "minReplicas: 30",
            "scaling.minReplicas (30) must not exceed scaling.maxReplicas (20)",
        ),
        (
            "targetCallsPerPod: 40",
            "targetCallsPerPod: 80",
            "scaling.targetCallsPerPod (80) must not exceed",
        ),
        (
            "publicUrl: https://voice.example.com",
            "publicUrl: http://voice.example.com",
            "must be an https:// URL",
        ),
        (
            "turnLatencyP95Ms: 800",
            "turnLatencyP95Ms: 0",
            "slo.turnLatencyP95Ms must be greater than 0",
        ),
        (
            "modelPoolRef: whisper-v3",
            "modelPoolRef: whisper-v3\n    endpoint: https://x/v1",
            "stt needs exactly one of modelPoolRef and endpoint",
        ),
    ];
    for (from, to, want) in cases {
        let yaml = base.replace(from, to);
        assert_ne!(yaml, base, "{from} not in sample");
        let err = build_agent(&agent_yaml(&yaml), &pools(), &BuildSettings::default()).unwrap_err();
        assert_eq!(err.reason(), condition::reason::INVALID_SPEC);
        assert!(err.to_string().contains(want), "got {err}, want {want}");
    }
}

#[test]
fn agent_metrics_and_probes_are_on_the_admin_port_not_the_twilio_one() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let settings = BuildSettings {
        service_monitors: true,
        ..BuildSettings::default()
    };
    let children = build_agent(&agent, &pools(), &settings).unwrap();
    let d = children
        .iter()
        .find_map(|c| match c {
            Child::Deployment(d) => Some(d.as_ref()),
            _ => None,
        })
        .unwrap();
    let c = container(d);
    let ports: Vec<(String, i32)> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("http".to_string(), 8080), ("admin".to_string(), 9090)]
    );
    for probe in [&c.readiness_probe, &c.liveness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.port, IntOrString::String("admin".into()));
    }
    // The agent listens where the pod says.
    let yaml = &config_map(&children).data.as_ref().unwrap()["agent.yaml"];
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(v["listenAddr"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(v["adminListenAddr"].as_str(), Some("0.0.0.0:9090"));
    assert_eq!(
        service_ports(&children),
        [("http".to_string(), 8080), ("admin".to_string(), 9090)]
    );
    let sm = children
        .iter()
        .find(|c| c.kind() == "ServiceMonitor")
        .unwrap();
    let sm = serde_json::to_value(sm).unwrap();
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
}

#[test]
fn service_monitor_only_when_the_crd_exists() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let without = build_agent(&agent, &pools(), &BuildSettings::default()).unwrap();
    assert!(!without.iter().any(|c| c.kind() == "ServiceMonitor"));
    let settings = BuildSettings {
        service_monitors: true,
        ..BuildSettings::default()
    };
    let with = build_agent(&agent, &pools(), &settings).unwrap();
    let sm = with.iter().find(|c| c.kind() == "ServiceMonitor").unwrap();
    let y = serde_yaml::to_string(sm).unwrap();
    assert!(y.contains("apiVersion: monitoring.coreos.com/v1"), "{y}");
    assert!(y.contains("path: /metrics"));
}

#[test]
fn model_pools_get_a_service_monitor_on_their_service_where_the_engine_has_metrics() {
    let settings = BuildSettings {
        service_monitors: true,
        ..BuildSettings::default()
    };
    for (file, scraped) in [
        ("gemma-27b.yaml", true),
        ("csm.yaml", true),
        ("whisper.yaml", true),
        ("speaches", false),
    ] {
        let pool: ModelPool = if file == "speaches" {
            pool_yaml(
                "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: stt, namespace: voice}\n\
                 spec: {engine: whisper, model: Systran/faster-whisper-large-v3, gpu: {count: 1}}\n",
            )
        } else {
            sample(file)
        };
        let without = build_pool_with(&pool, &BuildSettings::default());
        assert!(
            !without.iter().any(|c| c.kind() == "ServiceMonitor"),
            "{file}"
        );
        let with = build_pool_with(&pool, &settings);
        let Some(sm) = with.iter().find(|c| c.kind() == "ServiceMonitor") else {
            assert!(!scraped, "{file}: no ServiceMonitor");
            continue;
        };
        assert!(
            scraped,
            "{file}: a ServiceMonitor for an engine without metrics"
        );
        let sm = serde_json::to_value(sm).unwrap();
        let svc = with.iter().find(|c| c.kind() == "Service").unwrap();
        let svc = serde_json::to_value(svc).unwrap();
        // The Prometheus Operator labels series with the Service's name, which is what the
        // autoscaler's engine queries select (`service="<pool>"`).
        assert_eq!(sm["metadata"]["name"], svc["metadata"]["name"], "{file}");
        let wanted = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
        assert!(!wanted.is_empty(), "{file}");
        for (k, v) in wanted {
            assert_eq!(
                &svc["metadata"]["labels"][k], v,
                "{file}: the ServiceMonitor selects the pool's Service by {k}"
            );
        }
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "http", "{file}");
        assert_eq!(sm["metadata"]["ownerReferences"][0]["kind"], "ModelPool");
    }
}

#[test]
fn render_samples_directory_renders_every_resource() {
    let input = render::read_input(&samples_dir()).unwrap();
    assert_eq!(
        (input.pools.len(), input.agents.len(), input.secrets.len()),
        (3, 1, 2)
    );
    let out = render::render(&input, &BuildSettings::default()).unwrap();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out.yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    // gemma: 5, whisper: 5, csm: 5, receptionist: 4
    assert_eq!(docs.len(), 19);
    assert!(
        docs.iter()
            .all(|d| d["apiVersion"].is_string() && d["kind"].is_string())
    );
}

#[test]
fn render_notes_a_pool_missing_from_the_input() {
    let mut input = render::Input::default();
    let text = std::fs::read_to_string(samples_dir().join("receptionist.yaml")).unwrap();
    render::parse_into(&mut input, &PathBuf::from("receptionist.yaml"), &text).unwrap();
    let out = render::render(&input, &BuildSettings::default()).unwrap();
    assert_eq!(out.problems.len(), 1);
    assert!(
        out.problems[0].contains("ModelPool not found"),
        "{:?}",
        out.problems
    );
    assert!(
        out.yaml
            .contains("# note: not rendered: VoiceAgent voice/receptionist")
    );
}

#[test]
fn render_rejects_malformed_documents_with_file_and_index() {
    let mut input = render::Input::default();
    let err = render::parse_into(
        &mut input,
        &PathBuf::from("bad.yaml"),
        "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: x}\nspec: {engine: tpu, model: m}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("bad.yaml: document 2:"), "{err}");
    assert!(err.contains("tpu"), "{err}");
}

fn preload_job(children: &[Child]) -> Option<&k8s_openapi::api::batch::v1::Job> {
    children.iter().find_map(|c| match c {
        Child::Job(j) => Some(j.as_ref()),
        _ => None,
    })
}

fn preload_name(pool: &ModelPool) -> String {
    preload_job(&build_pool(pool))
        .and_then(|j| j.metadata.name.clone())
        .expect("a preload Job")
}

/// Anything in the Job's immutable pod template must give the Job a new name, or the apply
/// is refused with 422 and the pool is wedged.
#[test]
fn preload_job_name_follows_its_whole_template() {
    let base: ModelPool = sample("gemma-27b.yaml");
    let name = preload_name(&base);
    assert!(name.starts_with("gemma-27b-preload-"), "{name}");
    assert_eq!(name.len(), "gemma-27b-preload-".len() + 8);
    assert_eq!(preload_name(&base), name, "stable for the same spec");

    let mut selector = base.clone();
    selector
        .spec
        .node_selector
        .insert("zone".into(), "a".into());
    let mut tolerations = base.clone();
    tolerations
        .spec
        .tolerations
        .push(k8s_openapi::api::core::v1::Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        });
    let mut secret = base.clone();
    secret.spec.hugging_face_token_secret_ref = Some(grokcast_crds::SecretKeyRef {
        name: "other-hf".into(),
        key: "token".into(),
    });
    let mut model = base.clone();
    model.spec.model = "google/gemma-3-12b-it".into();
    for (what, changed) in [
        ("nodeSelector", &selector),
        ("tolerations", &tolerations),
        ("HF env", &secret),
        ("checkpoint", &model),
    ] {
        assert_ne!(preload_name(changed), name, "{what} changes the template");
    }
    let settings = BuildSettings {
        preload_image: "example.com/preload:2".into(),
        ..BuildSettings::default()
    };
    let valid = model_pool::validate(&base, &settings).unwrap();
    let other_image = preload_job(&model_pool::build(&valid, &settings))
        .and_then(|j| j.metadata.name.clone())
        .unwrap();
    assert_ne!(other_image, name, "preload image changes the template");
    // Deployment-only fields do not restart the preload.
    let mut replicas = base.clone();
    replicas.spec.replicas = 3;
    assert_eq!(preload_name(&replicas), name);
}

/// The TTL controller deletes a finished Job after a day; the recorded completion keeps the
/// operator from creating it again, and a new template starts a new preload.
#[test]
fn a_completed_preload_is_not_run_again() {
    let mut pool: ModelPool = sample("gemma-27b.yaml");
    let settings = BuildSettings::default();
    let wanted = {
        let valid = model_pool::validate(&pool, &settings).unwrap();
        model_pool::preload_for(&valid, &settings).unwrap()
    };
    assert_eq!(wanted.job_name, preload_name(&pool));
    assert_eq!(
        wanted.checkpoint, "ISTA-DASLab/gemma-3-27b-it-GPTQ-4b-128g",
        "the checkpoint vLLM loads"
    );
    let done = grokcast_crds::PreloadStatus {
        job_name: wanted.job_name.clone(),
        template_hash: wanted.template_hash.clone(),
        checkpoint: wanted.checkpoint.clone(),
        completed_at: None,
    };
    pool.status = Some(grokcast_crds::ModelPoolStatus {
        preload: Some(done.clone()),
        ..Default::default()
    });
    let children = build_pool(&pool);
    assert!(preload_job(&children).is_none(), "recorded: no Job");
    assert!(
        children.iter().any(|c| c.kind() == "PersistentVolumeClaim"),
        "the cache stays"
    );
    assert_eq!(
        model_pool::preload_state(Some(&wanted), None, Some(&done)),
        model_pool::PreloadState::Done
    );
    pool.spec.model = "google/gemma-3-12b-it".into();
    assert!(
        preload_job(&build_pool(&pool)).is_some(),
        "a new checkpoint starts a new preload"
    );
}

#[test]
fn preload_state_reads_the_job_status() {
    use k8s_openapi::api::batch::v1::Job;
    let pool: ModelPool = sample("gemma-27b.yaml");
    let settings = BuildSettings::default();
    let valid = model_pool::validate(&pool, &settings).unwrap();
    let wanted = model_pool::preload_for(&valid, &settings).unwrap();
    let job = |conditions: serde_json::Value| -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": wanted.job_name},
            "status": {"conditions": conditions, "completionTime": "2025-01-02T03:04:05Z"}
        }))
        .unwrap()
    };
    assert!(matches!(
        model_pool::preload_state(Some(&wanted), None, None),
        model_pool::PreloadState::Running { .. }
    ));
    let complete = job(serde_json::json!([{"type": "Complete", "status": "True"}]));
    match model_pool::preload_state(Some(&wanted), Some(&complete), None) {
        model_pool::PreloadState::Completed(s) => {
            assert_eq!(s.job_name, wanted.job_name);
            assert_eq!(s.template_hash, wanted.template_hash);
            assert!(s.completed_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    let failed = job(serde_json::json!([{"type": "Failed", "status": "True",
                                         "message": "Job has reached the specified backoff limit"}]));
    assert!(matches!(
        model_pool::preload_state(Some(&wanted), Some(&failed), None),
        model_pool::PreloadState::Failed { message, .. } if message.contains("backoff limit")
    ));
    assert_eq!(
        model_pool::preload_state(None, None, None),
        model_pool::PreloadState::None
    );
}

#[test]
fn only_this_pools_older_preload_jobs_are_stale() {
    let stale = model_pool::stale_preload_jobs(
        "gemma",
        Some("gemma-preload-0000aaaa"),
        [
            "gemma-preload-0000aaaa",
            "gemma-preload-1111bbbb",
            "gemma-big-preload-2222cccc",
            "gemma-preload-x",
        ],
    );
    assert_eq!(stale, ["gemma-preload-1111bbbb"]);
    assert_eq!(
        model_pool::stale_preload_jobs("gemma", None, ["gemma-preload-1111bbbb"]),
        ["gemma-preload-1111bbbb"],
        "preload switched off: every old Job goes"
    );
}

/// Model-server and preload pods meet the restricted Pod Security profile as far as their
/// images allow: vLLM's official image runs as root, so only it goes without runAsNonRoot.
#[test]
fn model_server_and_preload_pods_are_locked_down() {
    for pool in pools() {
        let children = build_pool(&pool);
        let engine = pool.spec.engine;
        let mut pods: Vec<&PodSpec> = vec![pod(deployment(&children))];
        if let Some(job) = preload_job(&children) {
            pods.push(job.spec.as_ref().unwrap().template.spec.as_ref().unwrap());
        }
        for (i, p) in pods.iter().enumerate() {
            let what = format!("{engine:?} pod {i}");
            assert_eq!(p.automount_service_account_token, Some(false), "{what}");
            let psc = p.security_context.as_ref().expect("pod securityContext");
            assert_eq!(
                psc.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault",
                "{what}"
            );
            let c = &p.containers[0];
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..]),
                "{what}"
            );
            assert_eq!(
                sc.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault",
                "{what}"
            );
        }
        let server = container(deployment(&children))
            .security_context
            .as_ref()
            .unwrap();
        match engine {
            grokcast_crds::Engine::Whisper => {
                assert_eq!(server.run_as_non_root, Some(true));
                assert_eq!(server.run_as_user, Some(1000));
            }
            grokcast_crds::Engine::Vllm => assert_eq!(server.run_as_non_root, None),
            _ => {}
        }
    }
    let cpu: ModelPool = pool_yaml(
        "apiVersion: grokcast.io/v1alpha1\nkind: ModelPool\nmetadata: {name: tiny, namespace: voice}\n\
         spec: {engine: grokcast, role: llm, model: gemma-270m, gpu: {count: 0}}\n",
    );
    let sc = container(deployment(&build_pool(&cpu)))
        .security_context
        .clone()
        .unwrap();
    assert_eq!(
        (sc.run_as_non_root, sc.run_as_user),
        (Some(true), Some(65_532))
    );
}

/// API servers before 1.30 refuse the preStop sleep action with a 500; there the agent pod
/// goes without the hook and drains on SIGTERM alone.
#[test]
fn pre_stop_sleep_is_left_out_for_old_api_servers() {
    let agent: VoiceAgent = sample("receptionist.yaml");
    let old = BuildSettings {
        pre_stop_sleep: false,
        ..BuildSettings::default()
    };
    let children = build_agent(&agent, &pools(), &old).unwrap();
    let d = deployment(&children);
    assert!(container(d).lifecycle.is_none());
    let yaml = serde_yaml::to_string(d).unwrap();
    assert!(!yaml.contains("sleep"), "{yaml}");
    assert!(
        pod(d).termination_grace_period_seconds.unwrap() > 600,
        "the drain still has its grace period"
    );
    let current = build_agent(&agent, &pools(), &BuildSettings::default()).unwrap();
    let lifecycle = container(deployment(&current)).lifecycle.clone().unwrap();
    assert!(lifecycle.pre_stop.unwrap().sleep.is_some());
}

#[test]
fn tools_reach_the_agent_and_the_api_key_only_from_its_secret() {
    let base = std::fs::read_to_string(samples_dir().join("receptionist.yaml")).unwrap();
    // The Gemma pool started to call tools, as vLLM must be.
    let mut calling = pools();
    calling[0].spec.args = [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "pythonic",
    ]
    .map(String::from)
    .to_vec();
    let tools = "  tools:\n    endCall: {enabled: true}\n    sendDtmf: {enabled: true}\n    transferCall:\n      enabled: true\n      targets:\n      - {name: sales, to: '+15551230000', description: new orders}\n    http:\n    - name: order_status\n      description: Looks up an order\n      url: http://orders.shop:8080/status\n      parameters: {type: object, properties: {order_id: {type: string}}}\n";
    let key = "      apiKeySecretRef: {name: twilio-api-key}\n";
    let with_key = base
        .replacen("spec:\n", &format!("spec:\n{tools}"), 1)
        .replacen("      publicUrl:", &format!("{key}      publicUrl:"), 1);
    let children =
        build_agent(&agent_yaml(&with_key), &calling, &BuildSettings::default()).unwrap();
    let env = pod(deployment(&children)).containers[0]
        .env
        .clone()
        .unwrap();
    for (var, key) in [
        ("GROKCAST_TWILIO_ACCOUNT_SID", "accountSid"),
        ("GROKCAST_TWILIO_API_KEY_SID", "apiKeySid"),
        ("GROKCAST_TWILIO_API_KEY_SECRET", "apiKeySecret"),
    ] {
        assert_eq!(
            secret_of(&env, var),
            Some(("twilio-api-key".into(), key.into())),
            "{var}"
        );
    }
    let text = config_map(&children).data.as_ref().unwrap()["agent.yaml"].clone();
    assert!(!text.contains("apiKey"), "no key in agent.yaml: {text}");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let t = &config["tools"];
    assert_eq!(t["endCall"]["enabled"], serde_yaml::Value::Bool(true));
    assert_eq!(t["transferCall"]["targets"][0]["to"], "+15551230000");
    assert_eq!(t["http"][0]["timeoutMs"], 3000);
    assert_eq!(
        t["http"][0]["parameters"]["properties"]["order_id"]["type"],
        "string"
    );

    // No tools: nothing in agent.yaml and no key in the pod.
    let children = build_agent(&agent_yaml(&base), &calling, &BuildSettings::default()).unwrap();
    let text = config_map(&children).data.as_ref().unwrap()["agent.yaml"].clone();
    assert!(!text.contains("tools"), "{text}");

    // A transfer without an API key, and an HTTP tool named like a built-in, are refused.
    let no_key = base.replacen("spec:\n", &format!("spec:\n{tools}"), 1);
    let err = build_agent(&agent_yaml(&no_key), &calling, &BuildSettings::default()).unwrap_err();
    assert_eq!(err.reason(), condition::reason::INVALID_SPEC);
    assert!(err.to_string().contains("apiKeySecretRef"), "{err}");
    let clash = with_key.replace("name: order_status", "name: end_call");
    let err = build_agent(&agent_yaml(&clash), &calling, &BuildSettings::default()).unwrap_err();
    assert!(err.to_string().contains("\"end_call\" is taken"), "{err}");

    // A vLLM pool not started to call tools would answer 400 to every turn: refused, by name.
    let err = build_agent(&agent_yaml(&with_key), &pools(), &BuildSettings::default()).unwrap_err();
    assert_eq!(err.reason(), condition::reason::INVALID_SPEC);
    assert!(
        err.to_string().contains("--enable-auto-tool-choice")
            && err.to_string().contains("gemma-27b"),
        "{err}"
    );

    // A missing API key Secret blocks the agent under its own field.
    let agent = agent_yaml(&with_key);
    let p = calling.clone();
    let secrets = |r: &grokcast_crds::SecretKeyRef| match r.name.as_str() {
        "twilio-api-key" => SecretLookup::Missing,
        _ => SecretLookup::Present,
    };
    let err = voice_agent::validate(&agent, pool_lookup(&p), secrets).unwrap_err();
    assert_eq!(
        err.to_string(),
        "telephony.twilio.apiKeySecretRef: Secret \"twilio-api-key\" not found"
    );
    assert!(
        voice_agent::secret_refs(&agent.spec)
            .iter()
            .any(|r| r.name == "twilio-api-key" && r.key == "apiKeySecret"),
        "the operator watches the key's Secret"
    );
}

//! `grokcast-operator render`: the children the operator would apply for a set of
//! ModelPool and VoiceAgent manifests, offline, for GitOps review and diffs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use grokcast_crds::{ModelPool, VoiceAgent};
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::children::Child;
use crate::settings::BuildSettings;
use crate::{model_pool, voice_agent};

/// Uid given to resources read from files, which have none; owner references need one.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Why rendering failed before any resource was looked at.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A path could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML or not a valid ModelPool/VoiceAgent/Secret.
    #[error("{path}: document {index}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// The parse error.
        source: serde_yaml::Error,
    },
    /// Children could not be serialized.
    #[error("serializing {kind} {name}: {source}")]
    Serialize {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Error.
        source: serde_yaml::Error,
    },
}

/// Parsed input: the resources found in the given files, in file order.
#[derive(Debug, Default)]
pub struct Input {
    /// ModelPools.
    pub pools: Vec<ModelPool>,
    /// VoiceAgents.
    pub agents: Vec<VoiceAgent>,
    /// Secrets, used only to check that references resolve.
    pub secrets: Vec<Secret>,
    /// Documents of other kinds, skipped.
    pub skipped: usize,
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    kind: String,
}

/// Collect `.yaml`/`.yml` files under `path` (a file or a directory, recursively), sorted
/// so output is stable.
pub fn collect_files(path: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let read_err = |source| RenderError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_err)? {
        let p = entry.map_err(read_err)?.path();
        if p.is_dir() {
            files.extend(collect_files(&p)?);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Parse every document of `text` (from `path`) into `input`.
pub fn parse_into(input: &mut Input, path: &Path, text: &str) -> Result<(), RenderError> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let parse_err = |source| RenderError::Parse {
            path: path.to_path_buf(),
            index: i + 1,
            source,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(parse_err)?;
        if value.is_null() {
            continue;
        }
        let head: Head = serde_yaml::from_value(value.clone()).map_err(parse_err)?;
        match head.kind.as_str() {
            "ModelPool" => input.pools.push(with_defaults(
                serde_yaml::from_value::<ModelPool>(value).map_err(parse_err)?,
            )),
            "VoiceAgent" => input.agents.push(with_defaults(
                serde_yaml::from_value::<VoiceAgent>(value).map_err(parse_err)?,
            )),
            "Secret" => input.secrets.push(with_defaults(
                serde_yaml::from_value(value).map_err(parse_err)?,
            )),
            _ => input.skipped += 1,
        }
    }
    Ok(())
}

fn with_defaults<K: kube::Resource>(mut obj: K) -> K {
    let meta = obj.meta_mut();
    meta.namespace.get_or_insert_with(|| "default".into());
    meta.uid.get_or_insert_with(|| PLACEHOLDER_UID.into());
    obj
}

/// Read and parse everything under `path`.
pub fn read_input(path: &Path) -> Result<Input, RenderError> {
    let mut input = Input::default();
    for file in collect_files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| RenderError::Read {
            path: file.clone(),
            source,
        })?;
        parse_into(&mut input, &file, &text)?;
    }
    Ok(input)
}

/// Rendered output: the YAML stream and the problems found (as notes).
#[derive(Debug, Default)]
pub struct Rendered {
    /// Multi-document YAML.
    pub yaml: String,
    /// One line per resource that could not be rendered.
    pub problems: Vec<String>,
}

fn secret_lookup(
    input: &Input,
    namespace: &str,
    name: &str,
    key: &str,
) -> voice_agent::SecretLookup {
    let Some(secret) = input.secrets.iter().find(|s| {
        s.metadata.name.as_deref() == Some(name)
            && s.metadata.namespace.as_deref() == Some(namespace)
    }) else {
        // Secrets are often kept out of Git; absence from the input is not an error here.
        return voice_agent::SecretLookup::Present;
    };
    let has = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(key));
    if has {
        voice_agent::SecretLookup::Present
    } else {
        voice_agent::SecretLookup::KeyMissing
    }
}

fn push_children(out: &mut Rendered, source: &str, children: &[Child]) -> Result<(), RenderError> {
    for child in children {
        let yaml = serde_yaml::to_string(child).map_err(|source| RenderError::Serialize {
            kind: child.kind(),
            name: child.name().to_string(),
            source,
        })?;
        let _ = write!(out.yaml, "---\n# Source: {source}\n{yaml}");
    }
    Ok(())
}

/// Render every resource in `input`. References resolve only against pools in the input.
pub fn render(input: &Input, settings: &BuildSettings) -> Result<Rendered, RenderError> {
    let mut out = Rendered::default();
    for pool in &input.pools {
        let source = format!(
            "ModelPool {}/{}",
            pool.metadata.namespace.as_deref().unwrap_or_default(),
            pool.metadata.name.as_deref().unwrap_or_default()
        );
        match model_pool::validate(pool, settings) {
            Ok(valid) => push_children(&mut out, &source, &model_pool::build(&valid, settings))?,
            Err(e) => out.problems.push(format!("{source}: {e}")),
        }
    }
    for agent in &input.agents {
        let ns = agent.metadata.namespace.clone().unwrap_or_default();
        let source = format!(
            "VoiceAgent {ns}/{}",
            agent.metadata.name.as_deref().unwrap_or_default()
        );
        let lookup = |name: &str| {
            input
                .pools
                .iter()
                .find(|p| {
                    p.metadata.name.as_deref() == Some(name)
                        && p.metadata.namespace.as_deref() == Some(ns.as_str())
                })
                .map_or(
                    voice_agent::PoolLookup::Missing,
                    voice_agent::PoolLookup::Found,
                )
        };
        let secret = |r: &grokcast_crds::SecretKeyRef| secret_lookup(input, &ns, &r.name, &r.key);
        match voice_agent::validate(agent, lookup, secret) {
            Ok(valid) => push_children(&mut out, &source, &voice_agent::build(&valid, settings))?,
            Err(e) => out.problems.push(format!("{source}: {e}")),
        }
    }
    for p in &out.problems {
        let _ = writeln!(out.yaml, "# note: not rendered: {p}");
    }
    Ok(out)
}

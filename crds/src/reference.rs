//! Markdown reference of both CRDs, generated from the schema descriptions so that
//! docs/crd-reference.md cannot drift from the types.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The whole reference page.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(
        "# CRD reference\n\n\
         Generated from the Rust types in `crds/` (the same text `kubectl explain` shows).\n\
         Do not edit by hand: regenerate with\n\
         `GROKCAST_BLESS=1 cargo test -p grokcast-crds --test crd_yaml`.\n",
    );
    for crd in crds {
        section(&mut out, crd);
    }
    out
}

fn section(out: &mut String, crd: &CustomResourceDefinition) {
    let names = &crd.spec.names;
    let version = &crd.spec.versions[0];
    let _ = write!(
        out,
        "\n## {kind}\n\n`{group}/{v}`, namespaced, short name `{short}`, category `{cat}`.\n",
        kind = names.kind,
        group = crd.spec.group,
        v = version.name,
        short = names.short_names.clone().unwrap_or_default().join("`, `"),
        cat = names.categories.clone().unwrap_or_default().join("`, `"),
    );
    let Some(schema) = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
    else {
        return;
    };
    if let Some(d) = schema["description"].as_str() {
        let _ = writeln!(out, "\n{d}");
    }
    if let Some(cols) = &version.additional_printer_columns {
        let list: Vec<String> = cols
            .iter()
            .map(|c| format!("`{}` ({})", c.name, c.json_path))
            .collect();
        let _ = writeln!(out, "\n`kubectl get` columns: {}.", list.join(", "));
    }
    for part in ["spec", "status"] {
        let _ = writeln!(
            out,
            "\n### {}.{part}\n\n| field | type | default | description |\n|---|---|---|---|",
            names.kind
        );
        rows(out, &schema["properties"][part], part);
        let rules = rules_of(&schema["properties"][part], part);
        if !rules.is_empty() {
            let _ = writeln!(
                out,
                "\nValidation rules (CEL, enforced by the API server):\n"
            );
            for r in rules {
                let _ = writeln!(out, "- {r}");
            }
        }
    }
}

fn type_of(v: &Value) -> String {
    if let Some(values) = v["enum"].as_array() {
        let list: Vec<String> = values
            .iter()
            .filter_map(|x| x.as_str())
            .map(|s| format!("`{s}`"))
            .collect();
        return list.join(" \\| ");
    }
    if v["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        return "quantity".into();
    }
    match v["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&v["items"])),
        Some(t) => t.into(),
        None => "object".into(),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn rows(out: &mut String, v: &Value, path: &str) {
    let Some(props) = v["properties"].as_object() else {
        return;
    };
    for (name, p) in props {
        let here = format!("{path}.{name}");
        let default = match &p["default"] {
            Value::Null => String::new(),
            d => format!("`{d}`"),
        };
        let _ = writeln!(
            out,
            "| `{here}` | {} | {} | {} |",
            type_of(p),
            cell(&default),
            cell(p["description"].as_str().unwrap_or_default())
        );
        // Embedded Kubernetes types are documented upstream; do not expand them here.
        let embedded = ["tolerations", "resources", "conditions"].contains(&name.as_str());
        if !embedded {
            rows(out, p, &here);
            if p["type"] == "array" {
                rows(out, &p["items"], &format!("{here}[]"));
            }
        }
    }
}

fn rules_of(v: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rules) = v["x-kubernetes-validations"].as_array() {
        for r in rules {
            out.push(format!(
                "`{path}`: `{}` — {}",
                r["rule"].as_str().unwrap_or_default(),
                r["message"].as_str().unwrap_or_default()
            ));
        }
    }
    if let Some(props) = v["properties"].as_object() {
        for (name, p) in props {
            out.extend(rules_of(p, &format!("{path}.{name}")));
        }
    }
    out
}

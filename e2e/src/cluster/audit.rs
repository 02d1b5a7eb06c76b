//! The API server's audit log, read back to count requests: per user (each test's operator
//! runs as its own ServiceAccount), verb, resource and field manager. This is the real
//! server's own record, so counts include everything the client library did (watches,
//! relists, retries), not what the code under test meant to do.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// A position in the audit log; [`AuditLog::since`] reads what came after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditMark(u64);

/// One request as the API server recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The authenticated user, e.g. `system:serviceaccount:ns:grokcast-operator`.
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// The resource (`deployments`, `voiceagents`), empty for non-resource URLs.
    pub resource: String,
    /// The subresource (`status`, `scale`), empty when none.
    pub subresource: String,
    /// The namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// The object's name, empty for collections.
    pub name: String,
    /// The HTTP status code of the response.
    pub code: u16,
    /// The `fieldManager` query parameter of a write, empty when none was given.
    pub field_manager: String,
    /// The client's User-Agent.
    pub user_agent: String,
}

impl AuditEntry {
    /// Whether the request changes objects.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let stage = v["stage"].as_str()?;
        let verb = v["verb"].as_str()?.to_owned();
        // One entry per request: a watch when its response starts (it may never complete
        // while the test runs), anything else when it completes.
        let counted = match stage {
            "ResponseStarted" => verb == "watch",
            "ResponseComplete" | "Panic" => verb != "watch",
            _ => false,
        };
        if !counted {
            return None;
        }
        let s = |p: &str| {
            v.pointer(p)
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let uri = s("/requestURI");
        let field_manager = uri
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("fieldManager="))
            .unwrap_or("")
            .to_owned();
        Some(Self {
            user: s("/user/username"),
            verb,
            resource: s("/objectRef/resource"),
            subresource: s("/objectRef/subresource"),
            namespace: s("/objectRef/namespace"),
            name: s("/objectRef/name"),
            code: v
                .pointer("/responseStatus/code")
                .and_then(|c| c.as_u64())
                .unwrap_or(0) as u16,
            field_manager,
            user_agent: s("/userAgent"),
        })
    }
}

/// Reader of an audit log file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The end of the log now.
    pub fn mark(&self) -> AuditMark {
        AuditMark(std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0))
    }

    /// Requests recorded after `mark`, and the mark after the last complete line.
    pub fn since(&self, mark: AuditMark) -> (Vec<AuditEntry>, AuditMark) {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            let _ = f.seek(SeekFrom::Start(mark.0));
            let _ = f.read_to_string(&mut text);
        }
        // A line still being written has no newline yet: leave it for the next read.
        let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let entries = text[..complete]
            .lines()
            .filter_map(AuditEntry::parse)
            .collect();
        (entries, AuditMark(mark.0 + complete as u64))
    }

    /// Requests by `user` after `mark`.
    pub fn by_user(&self, mark: AuditMark, user: &str) -> Vec<AuditEntry> {
        self.since(mark)
            .0
            .into_iter()
            .filter(|e| e.user == user)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_request_with_its_field_manager() {
        let lines = [
            r#"{"stage":"ResponseComplete","verb":"patch","requestURI":"/apis/apps/v1/namespaces/a/deployments/x?fieldManager=grokcast-operator&force=true","user":{"username":"system:serviceaccount:a:op"},"objectRef":{"resource":"deployments","namespace":"a","name":"x"},"responseStatus":{"code":200},"userAgent":"kube-rs"}"#,
            r#"{"stage":"ResponseStarted","verb":"watch","requestURI":"/api/v1/pods?watch=true","user":{"username":"u"},"objectRef":{"resource":"pods"},"responseStatus":{"code":200}}"#,
            r#"{"stage":"ResponseComplete","verb":"watch","requestURI":"/api/v1/pods?watch=true","user":{"username":"u"},"objectRef":{"resource":"pods"},"responseStatus":{"code":200}}"#,
        ];
        let entries: Vec<AuditEntry> = lines.iter().filter_map(|l| AuditEntry::parse(l)).collect();
        assert_eq!(entries.len(), 2, "a watch counts once");
        assert_eq!(entries[0].field_manager, "grokcast-operator");
        assert!(entries[0].is_write());
        assert_eq!(entries[0].code, 200);
        assert_eq!(entries[1].verb, "watch");
        assert!(!entries[1].is_write());
    }

    #[test]
    fn a_line_still_being_written_is_left_for_later() {
        let dir = std::env::temp_dir().join(format!("grokcast-audit-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("audit.log");
        let full = r#"{"stage":"ResponseComplete","verb":"get","user":{"username":"u"}}"#;
        std::fs::write(&path, format!("{full}\n{{\"stage\":\"Resp")).expect("write");
        let log = AuditLog::new(path.clone());
        let (entries, mark) = log.since(AuditMark::default());
        assert_eq!(entries.len(), 1);
        assert_eq!(mark.0 as usize, full.len() + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

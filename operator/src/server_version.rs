//! The Kubernetes API server version and the features the operator gates on it, pure.
//!
//! The operator reads `/version` once at start ([`crate::run::run`]). Children that use a
//! field an older API server does not know are refused as a whole (the agent Deployment's
//! `preStop.sleep` gets a 500 "field not declared in schema" from 1.26), so features that
//! need a newer server are switched off there instead, and an unsupported server is logged
//! as an error once, at start.

use k8s_openapi::apimachinery::pkg::version::Info;

/// The oldest Kubernetes minor version the operator supports: 1.30, the first whose API
/// server accepts the `sleep` lifecycle action (`PodLifecycleSleepAction` beta, on by default).
pub const MINIMUM_SUPPORTED: ServerVersion = ServerVersion {
    major: 1,
    minor: 30,
};

/// The first version that accepts `lifecycle.preStop.sleep`.
const PRE_STOP_SLEEP_SINCE: ServerVersion = MINIMUM_SUPPORTED;

/// A Kubernetes `major.minor` version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The version in `/version`'s answer. Managed clusters decorate the minor (`"30+"` on
/// GKE and EKS), so only its leading digits count; `gitVersion` (`v1.30.2-gke.1`) is the
/// fallback when major or minor is empty.
pub fn parse(info: &Info) -> Option<ServerVersion> {
    if let (Some(major), Some(minor)) = (leading_number(&info.major), leading_number(&info.minor)) {
        return Some(ServerVersion { major, minor });
    }
    let mut parts = info.git_version.trim_start_matches('v').split('.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    Some(ServerVersion { major, minor })
}

/// What the builders may use on this API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// The server is at least [`MINIMUM_SUPPORTED`].
    pub supported: bool,
    /// `lifecycle.preStop.sleep` is accepted.
    pub pre_stop_sleep: bool,
}

/// The features for a server of `version`; `None` (the version could not be read) assumes a
/// current server, since refusing to run on a read error would take the operator down.
pub fn features(version: Option<ServerVersion>) -> Features {
    match version {
        None => Features {
            supported: true,
            pre_stop_sleep: true,
        },
        Some(v) => Features {
            supported: v >= MINIMUM_SUPPORTED,
            pre_stop_sleep: v >= PRE_STOP_SLEEP_SINCE,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Info::default()
        }
    }

    #[test]
    fn parses_plain_decorated_and_git_versions() {
        let v = |major, minor| Some(ServerVersion { major, minor });
        assert_eq!(parse(&info("1", "26", "v1.26.15")), v(1, 26));
        assert_eq!(parse(&info("1", "30+", "v1.30.2-gke.1")), v(1, 30));
        assert_eq!(parse(&info("", "", "v1.31.0-eks-1")), v(1, 31));
        assert_eq!(parse(&info("", "", "garbage")), None);
    }

    #[test]
    fn pre_stop_sleep_only_from_1_30() {
        let at = |minor| features(Some(ServerVersion { major: 1, minor }));
        assert_eq!(
            at(26),
            Features {
                supported: false,
                pre_stop_sleep: false
            }
        );
        assert!(!at(29).pre_stop_sleep);
        assert_eq!(
            at(30),
            Features {
                supported: true,
                pre_stop_sleep: true
            }
        );
        assert!(at(33).pre_stop_sleep);
        assert!(features(None).pre_stop_sleep, "unknown: assume current");
        assert_eq!(MINIMUM_SUPPORTED.to_string(), "1.30");
    }
}

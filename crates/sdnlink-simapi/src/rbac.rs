//! Kubernetes RBAC as the simulated API server enforces it for one identity: the rules of a
//! ClusterRole (`apiGroups`, `resources`, `verbs`, `resourceNames`, `*` wildcards), matched the
//! way kube-apiserver's RBAC authorizer matches them, and its denial message, which names the
//! verb, the resource and the group, word for word as the real server phrases it. Discovery
//! (`/api`, `/apis`, `/version`) is not checked: every authenticated user may read it
//! (`system:discovery`).

use serde_json::Value;

/// One `rules[]` entry of a ClusterRole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    /// Empty: every name.
    pub resource_names: Vec<String>,
}

/// What a request asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'a str,
    /// API group, `""` for the core group.
    pub group: &'a str,
    /// Plural resource name.
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    /// The object's name (`None` for collections).
    pub name: Option<&'a str>,
}

fn any(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == "*" || v == want)
}

impl Rule {
    fn allows(&self, r: &Request<'_>) -> bool {
        any(&self.api_groups, r.group)
            && any(&self.resources, r.resource)
            && any(&self.verbs, r.verb)
            // A rule restricted to names never grants a collection verb (list, watch): the
            // authorizer only sees a name on requests for one object.
            && (self.resource_names.is_empty()
                || r.name.is_some_and(|n| self.resource_names.iter().any(|x| x == n)))
    }
}

/// The permissions of one user: the union of its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    pub rules: Vec<Rule>,
}

/// A ClusterRole that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("no ClusterRole named {0:?} in the YAML")]
    Missing(String),
    #[error("ClusterRole {role}: rules[{index}].{field}: {why}")]
    Field {
        role: String,
        index: usize,
        field: &'static str,
        why: String,
    },
    #[error("YAML document {index}: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
}

impl Role {
    /// The rules of ClusterRole `name` in a YAML stream (other documents are ignored, so the
    /// whole shipped RBAC file can be handed in).
    pub fn from_yaml(yaml: &str, name: &str) -> Result<Role, RoleError> {
        for (index, doc) in super::admit::split(yaml).iter().enumerate() {
            let v: Value = serde_yaml::from_str(doc.text)
                .map_err(|source| RoleError::Yaml { index, source })?;
            if v["kind"] != "ClusterRole" || v["metadata"]["name"] != name {
                continue;
            }
            let rules = v["rules"].as_array().cloned().unwrap_or_default();
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                let list = |field: &'static str| -> Result<Vec<String>, RoleError> {
                    let bad = |why: &str| RoleError::Field {
                        role: name.to_string(),
                        index: i,
                        field,
                        why: why.to_string(),
                    };
                    match &r[field] {
                        Value::Null => Ok(Vec::new()),
                        Value::Array(a) => a
                            .iter()
                            .map(|s| {
                                s.as_str()
                                    .map(str::to_string)
                                    .ok_or_else(|| bad("not a string"))
                            })
                            .collect(),
                        _ => Err(bad("not a list")),
                    }
                };
                out.push(Rule {
                    api_groups: list("apiGroups")?,
                    resources: list("resources")?,
                    verbs: list("verbs")?,
                    resource_names: list("resourceNames")?,
                });
            }
            return Ok(Role { rules: out });
        }
        Err(RoleError::Missing(name.to_string()))
    }

    /// Whether any rule grants the request.
    pub fn allows(&self, r: &Request<'_>) -> bool {
        self.rules.iter().any(|rule| rule.allows(r))
    }

    /// This role with `verb` removed from every rule that grants it on `resource` (to simulate
    /// a ClusterRole edited on the remote side).
    pub fn without(&self, verb: &str, resource: &str) -> Role {
        let mut rules = Vec::new();
        for rule in &self.rules {
            if !rule.resources.iter().any(|r| r == resource) {
                rules.push(rule.clone());
                continue;
            }
            // The other resources of the rule keep every verb; this one loses `verb`.
            let mut rest = rule.clone();
            rest.resources.retain(|r| r != resource);
            if !rest.resources.is_empty() {
                rules.push(rest);
            }
            let mut cut = rule.clone();
            cut.resources = vec![resource.to_string()];
            cut.verbs.retain(|v| v != verb);
            rules.push(cut);
        }
        Role { rules }
    }
}

/// kube-apiserver's denial message (403, reason `Forbidden`).
pub fn denial(user: &str, r: &Request<'_>) -> String {
    let qualified = if r.group.is_empty() {
        r.resource.to_string()
    } else {
        format!("{}.{}", r.resource, r.group)
    };
    let object = match r.name {
        Some(n) => format!("{qualified} {n:?}"),
        None => qualified,
    };
    let scope = match r.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_string(),
    };
    format!(
        "{object} is forbidden: User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
        r.verb, r.resource, r.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: reader
rules:
- apiGroups: [\"\"]
  resources: [services, nodes]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [\"*\"]
  verbs: [list]
- apiGroups: [\"\"]
  resources: [nodes]
  verbs: [patch]
  resourceNames: [n1]
";

    fn req<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        name: Option<&'a str>,
    ) -> Request<'a> {
        Request {
            verb,
            group,
            resource,
            namespace: None,
            name,
        }
    }

    #[test]
    fn rules_match_group_resource_verb_and_names_like_the_rbac_authorizer() {
        let role = Role::from_yaml(YAML, "reader").expect("the role parses");
        assert_eq!(role.rules.len(), 3);
        assert!(role.allows(&req("list", "", "services", None)));
        assert!(role.allows(&req("watch", "", "nodes", None)));
        assert!(!role.allows(&req("get", "", "services", Some("a"))));
        // The group must match: services of another group are not core services.
        assert!(!role.allows(&req("list", "apps", "services", None)));
        // `*` in resources is every resource of the rule's groups, and only of those.
        assert!(role.allows(&req("list", "discovery.k8s.io", "anything", None)));
        assert!(role.allows(&req("list", "discovery.k8s.io", "endpointslices", None)));
        assert!(!role.allows(&req("watch", "discovery.k8s.io", "endpointslices", None)));
        assert!(role.allows(&req("patch", "", "nodes", Some("n1"))));
        assert!(!role.allows(&req("patch", "", "nodes", Some("n2"))));
        assert!(!role.allows(&req("list", "network.openshift.io", "hostsubnets", None)));
    }

    #[test]
    fn a_missing_role_or_a_bad_field_is_named() {
        let e = Role::from_yaml(YAML, "writer").expect_err("no such role");
        assert_eq!(e.to_string(), "no ClusterRole named \"writer\" in the YAML");
        let bad = "kind: ClusterRole\nmetadata:\n  name: r\nrules:\n- verbs: list\n";
        let e = Role::from_yaml(bad, "r").expect_err("verbs is not a list");
        assert_eq!(e.to_string(), "ClusterRole r: rules[0].verbs: not a list");
    }

    #[test]
    fn without_removes_one_verb_on_one_resource() {
        let role = Role::from_yaml(YAML, "reader").expect("the role parses");
        let cut = role.without("watch", "nodes");
        assert!(!cut.allows(&req("watch", "", "nodes", None)));
        assert!(cut.allows(&req("list", "", "nodes", None)));
        assert!(cut.allows(&req("watch", "", "services", None)));
        assert!(cut.allows(&req("patch", "", "nodes", Some("n1"))));
    }

    #[test]
    fn the_denial_reads_as_kube_apiserver_writes_it() {
        let user = "system:serviceaccount:sdnlink:sdnlinkd-remote";
        assert_eq!(
            denial(
                user,
                &req("watch", "discovery.k8s.io", "endpointslices", None)
            ),
            "endpointslices.discovery.k8s.io is forbidden: User \
             \"system:serviceaccount:sdnlink:sdnlinkd-remote\" cannot watch resource \
             \"endpointslices\" in API group \"discovery.k8s.io\" at the cluster scope"
        );
        let r = Request {
            namespace: Some("lab"),
            name: Some("echo"),
            ..req("get", "", "services", None)
        };
        assert_eq!(
            denial("u", &r),
            "services \"echo\" is forbidden: User \"u\" cannot get resource \"services\" in \
             API group \"\" in the namespace \"lab\""
        );
    }
}

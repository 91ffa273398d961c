//! Admission of manifest documents, as a real API server decides it: each document of a file is
//! parsed on its own (a syntax error refuses that document only), must name `apiVersion`,
//! `kind` and `metadata.name` as strings, must be a kind this server serves under the
//! apiVersion that serves it, and must decode into the resource's schema (the k8s-openapi
//! types, which mirror the API server's Go types, so `port: "eighty"` is refused as it is by
//! kube-apiserver). Values are not validated beyond their types: the daemon's own trust rules
//! must be testable against a remote that serves hostile values.

use super::Res;
use serde_json::Value;

/// One refused document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The file (or `<yaml>` for text handed in at runtime).
    pub file: String,
    /// 1-based index among the file's non-empty documents.
    pub document: usize,
    /// 1-based line: of the syntax error, else where the document starts.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: document {} (line {}): {}",
            self.file, self.document, self.line, self.reason
        )
    }
}

/// One document of a YAML stream: the 1-based line where its text starts (its `---` line, if
/// any) and its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Document<'a> {
    pub line: usize,
    pub text: &'a str,
}

impl Document<'_> {
    /// The 1-based line of the document's first content (past its separator and comments).
    pub fn content_line(&self) -> usize {
        let skip = self
            .text
            .lines()
            .take_while(|l| {
                let t = l.trim();
                t.is_empty() || t.starts_with('#')
            })
            .count();
        self.line + skip
    }
}

/// A line that starts a new document (`---`, optionally followed by content or a comment).
fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

/// Whether a chunk holds anything but blank lines and comments.
fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "..."
    })
}

/// Splits a YAML stream into its non-empty documents, so one broken document cannot hide the
/// others (the stream parser stops at the first syntax error).
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line.trim_end_matches('\n')) {
            let chunk = &text[start..offset];
            if has_content(chunk) {
                docs.push(Document {
                    line: start_line,
                    text: chunk,
                });
            }
            // Content after `--- ` on the same line belongs to the new document.
            start = offset + 3;
            start_line = i + 1;
        }
        offset += line.len();
    }
    let chunk = &text[start..];
    if has_content(chunk) {
        docs.push(Document {
            line: start_line,
            text: chunk,
        });
    }
    docs
}

/// Parses one document into JSON; the error carries the 1-based line within `text`.
pub fn parse(text: &str) -> Result<Value, (Option<usize>, String)> {
    let y: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        (line, format!("YAML syntax error: {e}"))
    })?;
    serde_json::to_value(&y).map_err(|e| (None, format!("not representable as JSON: {e}")))
}

fn str_field<'v>(v: &'v Value, field: &str, path: &str) -> Result<Option<&'v str>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "{path}{field}: must be a string, got {}",
            type_name(other)
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The objects of one document: itself, or the items of a `*List` (then `true`).
pub fn objects(doc: Value) -> Result<(Vec<Value>, bool), String> {
    if !doc.is_object() {
        return Err(format!(
            "a document must be a mapping, got {}",
            type_name(&doc)
        ));
    }
    let kind = str_field(&doc, "kind", "")?.unwrap_or_default();
    if kind.ends_with("List") {
        return match doc.get("items") {
            Some(Value::Array(items)) => Ok((items.clone(), true)),
            None | Some(Value::Null) => Ok((Vec::new(), true)),
            Some(other) => Err(format!("items: must be a list, got {}", type_name(other))),
        };
    }
    Ok((vec![doc], false))
}

/// Admits one object: the resource it belongs to, or why a real API server would refuse it.
pub fn admit(obj: &Value) -> Result<Res, String> {
    if !obj.is_object() {
        return Err(format!(
            "an object must be a mapping, got {}",
            type_name(obj)
        ));
    }
    let api_version = str_field(obj, "apiVersion", "")?.ok_or("missing apiVersion")?;
    let kind = str_field(obj, "kind", "")?.ok_or("missing kind")?;
    let res = Res::from_kind(kind).ok_or_else(|| {
        format!(
            "no kind {kind:?} is served here (the simulated API server serves {})",
            Res::ALL.map(Res::kind).join(", ")
        )
    })?;
    if api_version != res.api_version() {
        return Err(format!(
            "no matches for kind {kind:?} in version {api_version:?} (use apiVersion: {})",
            res.api_version()
        ));
    }
    let meta = match obj.get("metadata") {
        None | Some(Value::Null) => return Err("missing metadata".into()),
        Some(m @ Value::Object(_)) => m,
        Some(other) => {
            return Err(format!(
                "metadata: must be a mapping, got {}",
                type_name(other)
            ))
        }
    };
    match str_field(meta, "name", "metadata.")? {
        None => return Err("missing metadata.name".into()),
        Some("") => return Err("metadata.name: must not be empty".into()),
        Some(_) => {}
    }
    str_field(meta, "namespace", "metadata.")?;
    if meta["annotations"][UNCHECKED_ANNOTATION].as_str() != Some("unchecked") {
        typed(res, obj)?;
    }
    Ok(res)
}

/// Annotation that skips the schema check of one document (value `unchecked`): the server then
/// plays a remote that serves what a real API server would refuse (the daemon's tests of
/// malformed objects).
pub const UNCHECKED_ANNOTATION: &str = "simapi.sdnlink.io/admission";

/// Decodes into the resource's schema, naming the path of the first wrong type.
fn typed(res: Res, obj: &Value) -> Result<(), String> {
    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    fn check<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<(), String> {
        serde_path_to_error::deserialize::<_, T>(obj)
            .map(drop)
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    e.into_inner().to_string()
                } else {
                    format!("{path}: {}", e.into_inner())
                }
            })
    }
    match res {
        Res::Services => check::<Service>(obj),
        // k8s-openapi fills missing required fields with defaults; the API server refuses them.
        Res::EndpointSlices => {
            str_field(obj, "addressType", "")?.ok_or("missing addressType (IPv4, IPv6 or FQDN)")?;
            check::<EndpointSlice>(obj)
        }
        Res::Nodes => check::<Node>(obj),
        // Not in k8s-openapi: network.openshift.io/v1 HostSubnet's fields the daemon reads.
        Res::HostSubnets => {
            str_field(obj, "host", "")?.ok_or("missing host")?;
            str_field(obj, "subnet", "")?.ok_or("missing subnet")?;
            str_field(obj, "hostIP", "")?;
            Ok(())
        }
        // network.openshift.io/v1 ClusterNetwork: the pod network as OpenShift SDN reports it.
        Res::ClusterNetworks => {
            str_field(obj, "serviceNetwork", "")?.ok_or("missing serviceNetwork")?;
            let nets = obj
                .get("clusterNetworks")
                .and_then(Value::as_array)
                .ok_or("missing clusterNetworks (a list of {CIDR, hostSubnetLength})")?;
            for (i, n) in nets.iter().enumerate() {
                if n.get("CIDR").and_then(Value::as_str).is_none() {
                    return Err(format!("clusterNetworks[{i}]: missing CIDR"));
                }
            }
            Ok(())
        }
    }
}

/// Every admitted object of a YAML stream, and every refusal (labelled `file`).
pub fn admit_stream(file: &str, text: &str) -> (Vec<(Res, Value)>, Vec<Refusal>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for (i, doc) in split(text).into_iter().enumerate() {
        let refuse = |line: usize, reason: String| Refusal {
            file: file.to_string(),
            document: i + 1,
            line,
            reason,
        };
        let value = match parse(doc.text) {
            Ok(v) => v,
            Err((line, reason)) => {
                let line = line.map_or(doc.line, |l| doc.line + l - 1);
                refused.push(refuse(line, reason));
                continue;
            }
        };
        match objects(value) {
            Err(reason) => refused.push(refuse(doc.content_line(), reason)),
            Ok((items, is_list)) => {
                for (j, obj) in items.into_iter().enumerate() {
                    match admit(&obj) {
                        Ok(res) => ok.push((res, obj)),
                        Err(reason) if is_list => refused
                            .push(refuse(doc.content_line(), format!("items[{j}]: {reason}"))),
                        Err(reason) => refused.push(refuse(doc.content_line(), reason)),
                    }
                }
            }
        }
    }
    (ok, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_line_numbers_and_drops_empty_documents() {
        let text = "# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n--- {d: 4}\n";
        let docs = split(text);
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert_eq!(docs[0].line, 2);
        assert!(docs[0].text.contains("a: 1"));
        assert_eq!(docs[1].line, 6);
        assert_eq!(docs[2].line, 9);
        assert_eq!(docs[2].text.trim(), "{d: 4}");
        assert_eq!((docs[0].content_line(), docs[1].content_line()), (3, 7));
        assert_eq!(docs[2].content_line(), 9);
        assert_eq!(split("x: 1\n").len(), 1);
        assert_eq!(split("").len(), 0);
        // `----` and `---x` are content, not separators.
        assert_eq!(split("a: |\n  ----\n  ---x\n").len(), 1);
    }

    #[test]
    fn a_syntax_error_names_its_own_line() {
        let (ok, bad) = admit_stream(
            "f.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: [b\n---\napiVersion: v1\nkind: Node\nmetadata: {name: c}\n",
        );
        assert_eq!(ok.len(), 2);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].document, 2);
        assert!((5..=8).contains(&bad[0].line), "{}", bad[0]);
        assert!(bad[0].reason.starts_with("YAML syntax error"), "{}", bad[0]);
    }

    #[test]
    fn refuses_what_a_real_api_server_refuses() {
        let cases = [
            ("kind: Node\nmetadata: {name: a}\n", "missing apiVersion"),
            ("apiVersion: v1\nmetadata: {name: a}\n", "missing kind"),
            ("apiVersion: v1\nkind: Node\n", "missing metadata"),
            ("apiVersion: v1\nkind: Node\nmetadata: {labels: {}}\n", "missing metadata.name"),
            ("apiVersion: v1\nkind: Node\nmetadata: {name: 7}\n", "metadata.name: must be a string"),
            ("apiVersion: 1\nkind: Node\nmetadata: {name: a}\n", "apiVersion: must be a string"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n", "no kind \"Pod\""),
            ("apiVersion: v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\nendpoints: []\n", "in version \"v1\""),
            ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n", "spec.ports[0].port: invalid type"),
            ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\nendpoints: []\n", "addressType"),
            ("apiVersion: v1\nkind: Node\nmetadata: {name: a, annotations: {k: [1]}}\n", "metadata.annotations.k"),
            ("- 1\n- 2\n", "must be a mapping"),
            ("apiVersion: v1\nkind: Service\nmetadata: {name: a, annotations: {simapi.sdnlink.io/admission: checked}}\nspec: {ports: [{port: x}]}\n", "spec.ports[0].port"),
            ("apiVersion: network.openshift.io/v1\nkind: HostSubnet\nmetadata: {name: a}\nhost: a\n", "missing subnet"),
        ];
        for (doc, want) in cases {
            let (ok, bad) = admit_stream("t.yaml", doc);
            assert!(ok.is_empty(), "{doc} was admitted");
            assert_eq!(bad.len(), 1, "{doc}");
            assert!(
                bad[0].reason.contains(want),
                "{doc}: {} lacks {want:?}",
                bad[0].reason
            );
            assert_eq!(bad[0].file, "t.yaml");
            assert_eq!((bad[0].document, bad[0].line), (1, 1));
        }
    }

    #[test]
    fn admits_well_typed_objects_and_lists_item_by_item() {
        let (ok, bad) = admit_stream(
            "l.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Node\n  metadata: {}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: x}\n  spec: {clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: http}]}\n",
        );
        assert_eq!(ok.len(), 2, "{bad:?}");
        assert_eq!(ok[0].0, Res::Nodes);
        assert_eq!(ok[1].0, Res::Services);
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].reason.starts_with("items[1]: missing metadata.name"),
            "{}",
            bad[0]
        );
    }

    #[test]
    fn the_unchecked_annotation_skips_only_the_schema_check() {
        let doc = "apiVersion: v1\nkind: Service\nmetadata: {name: a, annotations: {simapi.sdnlink.io/admission: unchecked}}\nspec: {ports: [{port: eighty}]}\n";
        let (ok, bad) = admit_stream("u.yaml", doc);
        assert_eq!((ok.len(), bad.len()), (1, 0), "{bad:?}");
        let (ok, bad) = admit_stream("u.yaml", &doc.replace("name: a, ", ""));
        assert!(ok.is_empty());
        assert!(bad[0].reason.contains("missing metadata.name"));
    }
}

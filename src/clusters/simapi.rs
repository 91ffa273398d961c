//! A simulated Kubernetes API server for tests and the lab (never started by the daemon).
//!
//! It serves exactly what sdnlinkd's kube-rs watches ask for, over TLS with a generated CA and
//! a bearer token: list with `resourceVersion`, `limit` and `continue`; watch with
//! ADDED/MODIFIED/DELETED events, BOOKMARK when `allowWatchBookmarks` is set and an ERROR event
//! with `410 Gone` for expired resource versions (as the real API server does, in the stream,
//! not as the HTTP status); GET and merge PATCH of single objects (Node annotations); and the
//! `/apis/network.openshift.io/v1` discovery document when HostSubnets are present. Resources:
//! core/v1 Services and Nodes, discovery.k8s.io/v1 EndpointSlices, network.openshift.io/v1
//! HostSubnets. Objects come from ordinary YAML manifests and can be changed at runtime.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};

/// Errors of the simulated API server.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simapi I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("simapi certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("simapi TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("manifest {file}: {reason}")]
    Manifest { file: String, reason: String },
    #[error("simapi needs a tokio runtime")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
}

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Res {
    Services,
    EndpointSlices,
    Nodes,
    HostSubnets,
}

impl Res {
    const ALL: [Res; 4] = [
        Res::Services,
        Res::EndpointSlices,
        Res::Nodes,
        Res::HostSubnets,
    ];

    fn kind(self) -> &'static str {
        match self {
            Res::Services => "Service",
            Res::EndpointSlices => "EndpointSlice",
            Res::Nodes => "Node",
            Res::HostSubnets => "HostSubnet",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Res::Services | Res::Nodes => "v1",
            Res::EndpointSlices => "discovery.k8s.io/v1",
            Res::HostSubnets => "network.openshift.io/v1",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Res::Services => "services",
            Res::EndpointSlices => "endpointslices",
            Res::Nodes => "nodes",
            Res::HostSubnets => "hostsubnets",
        }
    }
    fn namespaced(self) -> bool {
        matches!(self, Res::Services | Res::EndpointSlices)
    }
    fn from_kind(kind: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.kind() == kind)
    }
    /// `(group/version path prefix without leading slash, plural)` match.
    fn from_path(gv: &str, plural: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| {
            let prefix = match r.api_version() {
                "v1" => "api/v1".to_string(),
                gv => format!("apis/{gv}"),
            };
            prefix == gv && r.plural() == plural
        })
    }
}

type Key = (Res, String, String);

/// Events kept for watches to resume from (halved when exceeded).
const HISTORY_LIMIT: usize = 100_000;

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    res: Res,
    namespace: String,
    type_: &'static str,
    object: Value,
}

struct Store {
    rv: u64,
    /// Watches from a resourceVersion older than this get `410 Gone`.
    min_rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Arc<Event>>,
    openshift: bool,
    token: String,
    fault: Fault,
}

/// A fault the server injects into every request (after the token check for `Forbidden`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Serve normally.
    #[default]
    None,
    /// Answer `403 Forbidden` (an RBAC change on the remote side).
    Forbidden,
    /// Accept the request and never answer (a wedged API server or a black-holed path).
    Hang,
}

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    /// Bumped by `compact` and `shutdown`: every open watch ends.
    epoch: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The CA of a simulated API server: keep it to restart a server that clients already trust.
#[derive(Clone)]
pub struct SimCa {
    cert: Arc<rcgen::Certificate>,
    key: Arc<rcgen::KeyPair>,
}

impl SimCa {
    /// A fresh self-signed CA.
    pub fn generate() -> Result<SimCa, SimError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sdnlink simapi CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key)?;
        Ok(SimCa {
            cert: Arc::new(cert),
            key: Arc::new(key),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    fn server_config(&self, ip: IpAddr) -> Result<rustls::ServerConfig, SimError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        let mut ips: Vec<IpAddr> = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
        params
            .subject_alt_names
            .extend(ips.into_iter().map(rcgen::SanType::IpAddress));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sdnlink simapi");
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone(), self.cert.der().clone()], key_der)?;
        Ok(cfg)
    }
}

/// A running simulated API server.
pub struct SimApi {
    inner: Arc<Inner>,
    addr: SocketAddr,
    ca: SimCa,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

impl SimApi {
    /// Starts serving on `listener` (bound by the caller, possibly inside a network namespace)
    /// with a fresh CA, the objects of every YAML file in `manifests_dir`, and `token` as the
    /// only accepted bearer token. Needs a tokio runtime.
    pub fn start(
        listener: TcpListener,
        manifests_dir: Option<&Path>,
        token: &str,
    ) -> Result<SimApi, SimError> {
        Self::start_with_ca(listener, manifests_dir, token, SimCa::generate()?)
    }

    /// Like [`SimApi::start`] with a given CA, to restart a server on the same port that
    /// existing clients still trust. Resource versions continue from the wall clock, so every
    /// version a client got from the previous server has expired (its watches get `410 Gone`
    /// and relist, as after an etcd compaction).
    pub fn start_with_ca(
        listener: TcpListener,
        manifests_dir: Option<&Path>,
        token: &str,
        ca: SimCa,
    ) -> Result<SimApi, SimError> {
        let rt = tokio::runtime::Handle::try_current()?;
        let addr = listener.local_addr()?;
        let tls = Arc::new(ca.server_config(addr.ip())?);
        let base = now_micros();
        let (events, _) = broadcast::channel(16_384);
        let (epoch, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: base,
                min_rv: base,
                objects: BTreeMap::new(),
                history: Vec::new(),
                openshift: false,
                token: token.to_string(),
                fault: Fault::None,
            }),
            events,
            epoch,
        });
        let mut sim = SimApi {
            inner: inner.clone(),
            addr,
            ca,
            task: None,
        };
        if let Some(dir) = manifests_dir {
            let mut files: Vec<_> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f)?;
                sim.apply_yaml(&text).map_err(|e| match e {
                    SimError::Manifest { reason, .. } => SimError::Manifest {
                        file: f.display().to_string(),
                        reason,
                    },
                    other => other,
                })?;
            }
        }
        listener.set_nonblocking(true)?;
        let listener = {
            // `from_std` registers with the reactor of the runtime, which must be entered.
            let _entered = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        sim.task = Some(rt.spawn(accept_loop(listener, acceptor, inner)));
        Ok(sim)
    }

    /// `https://IP:port` of the server.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA, to restart a server with [`SimApi::start_with_ca`].
    pub fn ca(&self) -> SimCa {
        self.ca.clone()
    }

    /// A kubeconfig for `server_url` (normally [`SimApi::url`]) with this server's CA and token.
    pub fn kubeconfig_yaml(&self, server_url: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        let token = self.inner.lock().token.clone();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: sim\n  user:\n    token: {token}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\ncurrent-context: sim\n"
        )
    }

    /// Replaces the accepted bearer token (requests with the old one then get 401).
    pub fn set_token(&self, token: &str) {
        self.inner.lock().token = token.to_string();
    }

    /// Injects `fault` into every later request (open watches keep streaming).
    pub fn set_fault(&self, fault: Fault) {
        self.inner.lock().fault = fault;
    }

    /// Creates or replaces every object of a (multi-document) YAML text. Kinds other than
    /// Service, EndpointSlice, Node and HostSubnet are ignored, as an API server without
    /// those resources would refuse them.
    pub fn apply_yaml(&self, yaml: &str) -> Result<usize, SimError> {
        use serde::Deserialize;
        let bad = |reason: String| SimError::Manifest {
            file: "<yaml>".into(),
            reason,
        };
        let mut n = 0;
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            let items = match v.get("kind").and_then(Value::as_str) {
                Some(k) if k.ends_with("List") => v
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                _ => vec![v],
            };
            for item in items {
                if self.put(item).map_err(bad)? {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn put(&self, mut obj: Value) -> Result<bool, String> {
        let Some(res) = obj
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Res::from_kind)
        else {
            return Ok(false);
        };
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{} without metadata", res.kind()))?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{} without metadata.name", res.kind()))?
            .to_string();
        let ns = if res.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), ns.clone().into());
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        obj["apiVersion"] = res.api_version().into();
        let mut st = self.inner.lock();
        if res == Res::HostSubnets {
            st.openshift = true;
        }
        let key = (res, ns, name);
        let type_ = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        commit(&self.inner, &mut st, key, type_, obj);
        Ok(true)
    }

    /// Deletes one object (`kind` as in manifests, e.g. `Service`); whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(res) = Res::from_kind(kind) else {
            return false;
        };
        let ns = if res.namespaced() { namespace } else { "" };
        let key = (res, ns.to_string(), name.to_string());
        let mut st = self.inner.lock();
        let Some(obj) = st.objects.get(&key).cloned() else {
            return false;
        };
        commit(&self.inner, &mut st, key, "DELETED", obj);
        true
    }

    /// Forgets the event history and ends every open watch: clients reconnect from versions
    /// that are now too old and get `410 Gone`, then relist.
    pub fn compact(&self) {
        let mut st = self.inner.lock();
        st.rv += 1;
        st.min_rv = st.rv;
        st.history.clear();
        drop(st);
        self.inner.epoch.send_modify(|e| *e += 1);
    }

    /// The stored Node, as clients see it (to check published annotations).
    pub fn get_node(&self, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .objects
            .get(&(Res::Nodes, String::new(), name.to_string()))
            .cloned()
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.inner.lock().objects.len()
    }

    /// Stops serving: the listener closes and every connection is cut.
    pub async fn shutdown(mut self) {
        self.inner.epoch.send_modify(|e| *e += 1);
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for SimApi {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Stores a change under a new resourceVersion, records it in the history and broadcasts it.
fn commit(inner: &Inner, st: &mut Store, key: Key, type_: &'static str, mut obj: Value) {
    st.rv += 1;
    let rv = st.rv;
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), rv.to_string().into());
        m.entry("uid")
            .or_insert_with(|| format!("sim-{}-{}-{}", key.0.plural(), key.1, key.2).into());
    }
    obj["kind"] = key.0.kind().into();
    obj["apiVersion"] = key.0.api_version().into();
    let ev = Arc::new(Event {
        rv,
        res: key.0,
        namespace: key.1.clone(),
        type_,
        object: obj.clone(),
    });
    if type_ == "DELETED" {
        st.objects.remove(&key);
    } else {
        st.objects.insert(key, obj);
    }
    st.history.push(ev.clone());
    // Like etcd compaction: a bounded history; watches from before it get 410 Gone.
    if st.history.len() > HISTORY_LIMIT {
        let cut = st.history.len() - HISTORY_LIMIT / 2;
        st.history.drain(..cut);
        st.min_rv = st.history.first().map(|e| e.rv - 1).unwrap_or(st.rv);
    }
    let _ = inner.events.send(ev);
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    inner: Arc<Inner>,
) {
    // Connections live in this set: aborting the accept task drops it and cuts them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let inner = inner.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(handle(&inner, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn gone(rv: u64, min: u64) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("too old resource version: {rv} ({min})"), "reason": "Expired", "code": 410})
}

async fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let (authorized, fault) = {
        let st = inner.lock();
        let want = format!("Bearer {}", st.token);
        let ok = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            == Some(want.as_str());
        (ok, st.fault)
    };
    match fault {
        Fault::Hang => return std::future::pending().await,
        Fault::Forbidden if authorized => {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "simulated RBAC denial".into(),
            )
        }
        _ => {}
    }
    if !authorized {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
    }
    let path = req.uri().path().trim_matches('/').to_string();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let segs: Vec<&str> = path.split('/').collect();
    if segs == ["version"] {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sdnlink-sim",
                    "platform": "linux/amd64", "gitCommit": "", "gitTreeState": "clean",
                    "buildDate": "", "goVersion": "", "compiler": "gc"}),
        );
    }
    // Split into group/version prefix and the rest.
    let (gv, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("api/v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            )
        }
    };
    if rest.is_empty() {
        return discovery(inner, &gv);
    }
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            )
        }
    };
    let Some(res) = Res::from_path(&gv, plural) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} not found"),
        );
    };
    if res == Res::HostSubnets && !inner.lock().openshift {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} not found"),
        );
    }
    let ns = if res.namespaced() { ns } else { None };
    match (req.method().clone(), name) {
        (Method::GET, None) if query.get("watch").map(String::as_str) == Some("true") => {
            watch_response(inner, res, ns, &query)
        }
        (Method::GET, None) => list(inner, res, ns, &query),
        (Method::GET, Some(name)) => {
            let key = (res, ns.unwrap_or("").to_string(), name.to_string());
            match inner.lock().objects.get(&key) {
                Some(o) => json_response(StatusCode::OK, o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{plural} {name:?} not found"),
                ),
            }
        }
        (Method::PATCH, Some(name)) => {
            let ct = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            let key = (res, ns.unwrap_or("").to_string(), name.to_string());
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            patch(inner, key, &ct, &body)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the simulated API server".into(),
        ),
    }
}

fn discovery(inner: &Inner, gv: &str) -> Response<Body> {
    let openshift = inner.lock().openshift;
    let resources: Vec<Value> = Res::ALL
        .into_iter()
        .filter(|r| Res::from_path(gv, r.plural()) == Some(*r))
        .filter(|r| *r != Res::HostSubnets || openshift)
        .map(|r| {
            json!({"name": r.plural(), "singularName": r.kind().to_lowercase(), "namespaced": r.namespaced(),
                   "kind": r.kind(), "verbs": ["get", "list", "watch", "patch"]})
        })
        .collect();
    if resources.is_empty() {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("{gv} not found"));
    }
    let group_version = gv.trim_start_matches("api/").trim_start_matches("apis/");
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

fn list(
    inner: &Inner,
    res: Res,
    ns: Option<&str>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let st = inner.lock();
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    // The continue token pins the version of the first page (as the real server does), so a
    // client watching from it replays whatever changed while it paged.
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let Some((rv, after)) = c.split_once('|') else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "bad continue token".into(),
                );
            };
            let rv: u64 = rv.parse().unwrap_or(0);
            if rv < st.min_rv {
                return json_response(StatusCode::GONE, &gone(rv, st.min_rv));
            }
            (rv, Some(after.to_string()))
        }
        None => (st.rv, None),
    };
    let items: Vec<(&Key, &Value)> = st
        .objects
        .iter()
        .filter(|(k, _)| k.0 == res && ns.is_none_or(|n| k.1 == n))
        .filter(|(k, _)| {
            after
                .as_ref()
                .is_none_or(|a| format!("{}/{}", k.1, k.2) > *a)
        })
        .collect();
    let take = limit.unwrap_or(usize::MAX).min(items.len());
    let cont = (take < items.len()).then(|| {
        format!(
            "{list_rv}|{}/{}",
            items[take - 1].0 .1,
            items[take - 1].0 .2
        )
    });
    let page: Vec<Value> = items[..take].iter().map(|(_, v)| (*v).clone()).collect();
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = c.into();
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", res.kind()), "apiVersion": res.api_version(),
                "metadata": meta, "items": page}),
    )
}

fn watch_line(type_: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": type_, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch_response(
    inner: &Arc<Inner>,
    res: Res,
    ns: Option<&str>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let ns = ns.map(str::to_string);
    let filter_ns = ns.clone();
    let matches =
        move |e: &Event| e.res == res && filter_ns.as_ref().is_none_or(|n| *n == e.namespace);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (backlog, start_rv, live, gone_line) = {
        let st = inner.lock();
        let from = match query.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(v) => Some(v.parse::<u64>().unwrap_or(0)),
        };
        match from {
            Some(rv) if rv < st.min_rv => (
                Vec::new(),
                st.rv,
                None,
                Some(watch_line("ERROR", &gone(rv, st.min_rv))),
            ),
            Some(rv) => {
                let backlog: Vec<Bytes> = st
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && matches(e))
                    .map(|e| watch_line(e.type_, &e.object))
                    .collect();
                (backlog, st.rv, Some(inner.events.subscribe()), None)
            }
            // "Any version": the current state as ADDED events, then changes.
            None => {
                let backlog: Vec<Bytes> = st
                    .objects
                    .iter()
                    .filter(|(k, _)| k.0 == res && ns.as_ref().is_none_or(|n| *n == k.1))
                    .map(|(_, v)| watch_line("ADDED", v))
                    .collect();
                (backlog, st.rv, Some(inner.events.subscribe()), None)
            }
        }
    };
    let mut epoch = inner.epoch.subscribe();
    epoch.mark_unchanged();
    tokio::spawn(async move {
        if let Some(line) = gone_line {
            let _ = tx.send(line).await;
            return;
        }
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        let mut seen = start_rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = epoch.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": res.kind(), "apiVersion": res.api_version(),
                                    "metadata": {"resourceVersion": seen.to_string()}});
                    if tx.send(watch_line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                ev = live.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= seen { continue; }
                        seen = e.rv;
                        if matches(&e) && tx.send(watch_line(e.type_, &e.object)).await.is_err() {
                            return;
                        }
                    }
                    // Lagged or closed: end the stream; the client resumes from its last
                    // version, which the history still covers.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// RFC 7386 JSON merge patch (a strategic merge patch of a map such as annotations is the same).
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn patch(inner: &Inner, key: Key, content_type: &str, body: &[u8]) -> Response<Body> {
    if !(content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json"))
    {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("patch type {content_type:?} not supported by the simulated API server"),
        );
    }
    let p: Value = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut st = inner.lock();
    let Some(mut obj) = st.objects.get(&key).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {:?} not found", key.0.plural(), key.2),
        );
    };
    merge_patch(&mut obj, &p);
    commit(inner, &mut st, key.clone(), "MODIFIED", obj);
    match st.objects.get(&key) {
        Some(o) => json_response(StatusCode::OK, o),
        None => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "lost object".into(),
        ),
    }
}

//! A simulated Kubernetes API server for tests and the lab (never started by the daemon).
//!
//! It serves what sdnlinkd's kube-rs watches and `kubectl` ask for, over TLS with a generated
//! CA and a bearer token: list with `resourceVersion`, `limit`, `continue`, `labelSelector` and
//! `fieldSelector`; watch with ADDED/MODIFIED/DELETED events, BOOKMARK when
//! `allowWatchBookmarks` is set and an ERROR event with `410 Gone` for expired resource
//! versions (as the real API server does, in the stream, not as the HTTP status); GET, create
//! (POST), update (PUT, `409 Conflict` on a stale `resourceVersion`), patch (JSON merge,
//! strategic merge, JSON patch) and delete of single objects; and the discovery documents
//! (`/api`, `/apis`, each group version). Resources: core/v1 Services and Nodes,
//! discovery.k8s.io/v1 EndpointSlices, network.openshift.io/v1 HostSubnets (discovered only
//! once one exists). Objects come from ordinary YAML manifests, admitted document by document
//! as a real API server would (see `admit`), and can be changed at runtime, in-process or over
//! HTTP. [`Fault`]s make the server refuse, hang, deny or expire watches.

mod admit;
mod patch;
pub mod rbac;

pub use admit::Refusal;

/// How many objects of a YAML text the server admits, and what it refuses (for tests of
/// generated manifests).
pub fn admit_for_tests(file: &str, yaml: &str) -> (usize, Vec<Refusal>) {
    let (ok, refused) = admit::admit_stream(file, yaml);
    (ok.len(), refused)
}

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
    #[error("refused {} document(s): {}", .0.len(), .0.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "))]
    Refused(Vec<Refusal>),
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
    ClusterNetworks,
}

impl Res {
    const ALL: [Res; 5] = [
        Res::Services,
        Res::EndpointSlices,
        Res::Nodes,
        Res::HostSubnets,
        Res::ClusterNetworks,
    ];

    /// Served (and discoverable) only once an object of the OpenShift group was loaded, as a
    /// plain Kubernetes API server has no `network.openshift.io` group.
    fn openshift_only(self) -> bool {
        matches!(self, Res::HostSubnets | Res::ClusterNetworks)
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Services => "Service",
            Res::EndpointSlices => "EndpointSlice",
            Res::Nodes => "Node",
            Res::HostSubnets => "HostSubnet",
            Res::ClusterNetworks => "ClusterNetwork",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Res::Services | Res::Nodes => "v1",
            Res::EndpointSlices => "discovery.k8s.io/v1",
            Res::HostSubnets | Res::ClusterNetworks => "network.openshift.io/v1",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Res::Services => "services",
            Res::EndpointSlices => "endpointslices",
            Res::Nodes => "nodes",
            Res::HostSubnets => "hostsubnets",
            Res::ClusterNetworks => "clusternetworks",
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
    /// Bearer tokens bound to a user and a ClusterRole (see [`SimApi::add_identity`]); the
    /// token above is allowed everything.
    identities: Vec<Identity>,
    /// Requests refused by an identity's role.
    denials: u64,
    fault: Fault,
    /// Documents refused while loading the manifest directory.
    refused: Vec<Refusal>,
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
    /// Refuse connections: the listening socket stops listening (a SYN gets a RST, as from a
    /// host whose API server is down) and every open connection, watches included, is cut.
    Unreachable,
    /// Answer every watch with `410 Gone` (an ERROR event, reason `Expired`); setting it
    /// re-stamps every object with a new resourceVersion and ends the open watches, so
    /// clients relist and get versions they have never seen (as after an etcd restore).
    Gone,
}

impl Fault {
    /// Every fault, [`Fault::None`] first.
    pub const ALL: [Fault; 5] = [
        Fault::None,
        Fault::Forbidden,
        Fault::Hang,
        Fault::Unreachable,
        Fault::Gone,
    ];

    /// The name `sdnlink-lab api CLUSTER NAME` takes (`ok` for [`Fault::None`]).
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "ok",
            Fault::Forbidden => "forbidden",
            Fault::Hang => "hang",
            Fault::Unreachable => "unreachable",
            Fault::Gone => "gone",
        }
    }

    /// The fault named `name` (see [`Fault::name`]; `none` is also [`Fault::None`]).
    pub fn from_name(name: &str) -> Option<Fault> {
        match name {
            "none" => Some(Fault::None),
            _ => Fault::ALL.into_iter().find(|f| f.name() == name),
        }
    }
}

/// A ServiceAccount token and what its ClusterRole allows.
#[derive(Clone, Debug)]
struct Identity {
    token: String,
    user: String,
    role: rbac::Role,
}

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    /// Bumped by `compact` and `shutdown`: every open watch ends.
    epoch: watch::Sender<u64>,
    /// The current fault, for the accept loop (which stops accepting while unreachable).
    fault: watch::Sender<Fault>,
    /// The listening socket (a duplicate of the accept loop's descriptor), to stop and
    /// resume listening.
    socket: std::net::TcpListener,
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
        let (fault, fault_rx) = watch::channel(Fault::None);
        let socket = listener.try_clone()?;
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: base,
                min_rv: base,
                objects: BTreeMap::new(),
                history: Vec::new(),
                openshift: false,
                token: token.to_string(),
                identities: Vec::new(),
                denials: 0,
                fault: Fault::None,
                refused: Vec::new(),
            }),
            events,
            epoch,
            fault,
            socket,
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
                let (objects, refused) = admit::admit_stream(&f.display().to_string(), &text);
                for (res, obj) in objects {
                    sim.put(res, obj);
                }
                sim.inner.lock().refused.extend(refused);
            }
        }
        listener.set_nonblocking(true)?;
        let listener = {
            // `from_std` registers with the reactor of the runtime, which must be entered.
            let _entered = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        sim.task = Some(rt.spawn(accept_loop(listener, acceptor, inner, fault_rx)));
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
        kubeconfig(server_url, &ca, &token)
    }

    /// Also accepts `token`, as `user` (a ServiceAccount's `system:serviceaccount:NS:NAME`),
    /// allowed only what `role` grants: other requests get kube-apiserver's 403 naming the
    /// verb and resource. Adding a token that exists replaces its user and role.
    pub fn add_identity(&self, token: &str, user: &str, role: rbac::Role) {
        let mut st = self.inner.lock();
        st.identities.retain(|i| i.token != token);
        st.identities.push(Identity {
            token: token.to_string(),
            user: user.to_string(),
            role,
        });
    }

    /// The role of identity `token` (see [`SimApi::add_identity`]), if there is one.
    pub fn role(&self, token: &str) -> Option<rbac::Role> {
        let st = self.inner.lock();
        st.identities
            .iter()
            .find(|i| i.token == token)
            .map(|i| i.role.clone())
    }

    /// How many requests the identities' roles refused so far.
    pub fn denials(&self) -> u64 {
        self.inner.lock().denials
    }

    /// [`SimApi::kubeconfig_yaml`] with bearer token `token` (one of [`SimApi::add_identity`]).
    pub fn kubeconfig_yaml_for(&self, server_url: &str, token: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        kubeconfig(server_url, &ca, token)
    }

    /// Replaces the accepted bearer token (requests with the old one then get 401).
    pub fn set_token(&self, token: &str) {
        self.inner.lock().token = token.to_string();
    }

    /// Injects `fault` into every later request (open watches keep streaming, except under
    /// [`Fault::Unreachable`], which cuts them, and [`Fault::Gone`], which ends them).
    ///
    /// # Panics
    /// When the listening socket cannot be bound again on leaving [`Fault::Unreachable`]
    /// (another socket took the port meanwhile); [`SimApi::try_set_fault`] returns that error.
    pub fn set_fault(&self, fault: Fault) {
        if let Err(e) = self.try_set_fault(fault) {
            panic!("simapi on {}: setting fault {fault:?}: {e}", self.addr);
        }
    }

    /// [`SimApi::set_fault`], returning the error of listening again.
    pub fn try_set_fault(&self, fault: Fault) -> Result<(), SimError> {
        use nix::sys::socket::{shutdown, Shutdown};
        use std::os::fd::{AsFd, AsRawFd};
        let mut st = self.inner.lock();
        let was = st.fault;
        if was == fault {
            return Ok(());
        }
        if was == Fault::Unreachable {
            // Linux keeps the socket (and its network namespace) after shutdown(SHUT_RD) of a
            // listener. It forgets the port only when the kernel chose it (bound to port 0):
            // bind it to the same address again, then listen. A port the caller asked for
            // stays bound (SOCK_BINDPORT_LOCK, see inet_csk_listen_stop -> tcp_set_state ->
            // inet_put_port), and bind(2) then fails with EINVAL: listen at once.
            let fd = self.inner.socket.as_fd();
            let addr = nix::sys::socket::SockaddrStorage::from(self.addr);
            match nix::sys::socket::bind(fd.as_raw_fd(), &addr) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => return Err(SimError::Io(e.into())),
            }
            nix::sys::socket::listen(
                &fd,
                nix::sys::socket::Backlog::new(1024).map_err(|e| SimError::Io(e.into()))?,
            )
            .map_err(|e| SimError::Io(e.into()))?;
        }
        if fault == Fault::Unreachable {
            // A listener shut down for reading refuses new connections (RST to a SYN).
            shutdown(self.inner.socket.as_raw_fd(), Shutdown::Read)
                .map_err(|e| SimError::Io(e.into()))?;
        }
        if fault == Fault::Gone {
            restamp(&mut st);
        }
        st.fault = fault;
        drop(st);
        self.inner.fault.send_replace(fault);
        if fault == Fault::Gone {
            self.inner.epoch.send_modify(|e| *e += 1);
        }
        Ok(())
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.inner.lock().fault
    }

    /// Documents of the manifest directory that were refused (each with file, document index,
    /// line and reason); every other document was loaded.
    pub fn refused(&self) -> Vec<Refusal> {
        self.inner.lock().refused.clone()
    }

    /// Creates or replaces every object of a (multi-document) YAML text, all or nothing: if
    /// any document is refused (see [`SimApi::refused`] for the rules), nothing is applied and
    /// the error lists every refusal. Returns the number of objects applied.
    pub fn apply_yaml(&self, yaml: &str) -> Result<usize, SimError> {
        let (objects, refused) = admit::admit_stream("<yaml>", yaml);
        if !refused.is_empty() {
            return Err(SimError::Refused(refused));
        }
        let n = objects.len();
        for (res, obj) in objects {
            self.put(res, obj);
        }
        Ok(n)
    }

    /// Stores an admitted object (creating or replacing it).
    fn put(&self, res: Res, obj: Value) {
        let mut st = self.inner.lock();
        let Ok((key, obj)) = normalise(res, obj, None) else {
            unreachable!("admitted objects have a string metadata.name")
        };
        let type_ = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        commit(&self.inner, &mut st, key, type_, obj);
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

    /// Gives every object a new resourceVersion, forgets the event history and ends every
    /// open watch: clients get `410 Gone` and relist versions they have never seen (the
    /// one-shot form of [`Fault::Gone`]).
    pub fn expire(&self) {
        let mut st = self.inner.lock();
        restamp(&mut st);
        drop(st);
        self.inner.epoch.send_modify(|e| *e += 1);
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

    /// The stored object `kind` `namespace/name` (`namespace` ignored for cluster-scoped
    /// kinds), as clients see it.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = Res::from_kind(kind)?;
        let ns = if res.namespaced() { namespace } else { "" };
        self.inner
            .lock()
            .objects
            .get(&(res, ns.to_string(), name.to_string()))
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

/// The key of `obj` and the object with its namespace and apiVersion set. The namespace is the
/// request path's when given (the object's must then agree), else the object's, else `default`;
/// cluster-scoped kinds have none.
fn normalise(res: Res, mut obj: Value, path_ns: Option<&str>) -> Result<(Key, Value), String> {
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or("missing metadata")?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("missing metadata.name")?
        .to_string();
    let ns = if res.namespaced() {
        let own = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let ns = match (path_ns, own) {
            (Some(p), Some(o)) if p != o => {
                return Err(format!(
                    "the namespace of the provided object ({o}) does not match the namespace sent on the request ({p})"
                ))
            }
            (Some(p), _) => p.to_string(),
            (None, Some(o)) => o.to_string(),
            (None, None) => "default".to_string(),
        };
        meta.insert("namespace".into(), ns.clone().into());
        ns
    } else {
        meta.remove("namespace");
        String::new()
    };
    obj["apiVersion"] = res.api_version().into();
    Ok(((res, ns, name), obj))
}

/// Gives every object a new resourceVersion and expires every older one (no events: as after
/// an etcd restore, only a relist shows the new versions).
fn restamp(st: &mut Store) {
    let mut rv = st.rv;
    for obj in st.objects.values_mut() {
        rv += 1;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), rv.to_string().into());
        }
    }
    st.rv = rv + 1;
    st.min_rv = st.rv;
    st.history.clear();
}

/// RFC 3339 time of now, to the second (`metadata.creationTimestamp`).
fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Stores a change under a new resourceVersion, records it in the history and broadcasts it.
fn commit(inner: &Inner, st: &mut Store, key: Key, type_: &'static str, mut obj: Value) {
    st.rv += 1;
    let rv = st.rv;
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), rv.to_string().into());
        m.entry("uid")
            .or_insert_with(|| format!("sim-{}-{}-{}", key.0.plural(), key.1, key.2).into());
        m.entry("creationTimestamp")
            .or_insert_with(|| now_rfc3339().into());
    }
    obj["kind"] = key.0.kind().into();
    obj["apiVersion"] = key.0.api_version().into();
    if key.0.openshift_only() {
        st.openshift = true;
    }
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
    mut fault: watch::Receiver<Fault>,
) {
    // Connections live in this set: aborting the accept task drops it and cuts them all.
    let mut conns = tokio::task::JoinSet::new();
    // `None` while unreachable. The tokio registration of a listener that was shut down saw
    // no connection after it listened again (tested), so a fresh registration serves after.
    let mut listener = Some(listener);
    loop {
        tokio::select! {
            // The fault first: a registration that saw the listener shut down keeps its
            // closed readiness for good (tokio never clears READ_CLOSED, and a listener in
            // TCP_CLOSE polls EPOLLHUP), so its accepts see only EAGAIN until it is replaced.
            biased;
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                let unreachable = *fault.borrow_and_update() == Fault::Unreachable;
                if unreachable && listener.is_some() {
                    conns.abort_all();
                    listener = None;
                } else if !unreachable {
                    // Registered again on every change, not only after an `Unreachable` seen
                    // here: a watch receiver sees only the latest value, so an `Unreachable`
                    // undone before this task ran leaves the old registration, closed for
                    // good by the shutdown, answering every accept with EAGAIN.
                    listener = inner
                        .socket
                        .try_clone()
                        .and_then(|s| {
                            s.set_nonblocking(true)?;
                            tokio::net::TcpListener::from_std(s)
                        })
                        .ok();
                }
            }
            // `poll_accept` spends the task's coop budget on each readiness it tries, so the
            // EAGAIN loop of a stale registration yields and the fault above gets polled;
            // `accept()` retried inside one poll and starved it.
            accepted = std::future::poll_fn(|cx| {
                listener.as_ref().expect("guarded by is_some").poll_accept(cx)
            }), if listener.is_some() => {
                let Ok((tcp, _)) = accepted else {
                    // EINVAL from a listener just shut down, before its fault is seen above.
                    tokio::task::yield_now().await;
                    continue;
                };
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

/// A failure about one object (`details` names it, as kubectl prints it).
fn object_status(code: StatusCode, reason: &str, key: &Key, message: String) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16(),
                "details": {"name": key.2, "kind": key.0.plural()}}),
    )
}

fn not_found(key: &Key) -> Response<Body> {
    object_status(
        StatusCode::NOT_FOUND,
        "NotFound",
        key,
        format!("{} {:?} not found", key.0.plural(), key.2),
    )
}

fn conflict(key: &Key) -> Response<Body> {
    object_status(
        StatusCode::CONFLICT,
        "Conflict",
        key,
        format!(
            "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
            key.0.plural(),
            key.2
        ),
    )
}

fn bad_request(message: String) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn invalid(key: &Key, message: String) -> Response<Body> {
    object_status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        key,
        format!("{} {:?} is invalid: {message}", key.0.kind(), key.2),
    )
}

fn gone(rv: u64, min: u64) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("too old resource version: {rv} ({min})"), "reason": "Expired", "code": 410})
}

/// A request's path and query, split for routing.
struct Route<'a> {
    res: Res,
    ns: Option<&'a str>,
    name: Option<&'a str>,
}

fn kubeconfig(server_url: &str, ca_base64: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca_base64}\nusers:\n- name: sim\n  user:\n    token: {token}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\ncurrent-context: sim\n"
    )
}

async fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    // `None`: not authenticated; `Some(None)`: the all-powerful token; `Some(Some(i))`: an
    // identity whose role decides.
    let (caller, fault) = {
        let st = inner.lock();
        let bearer = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        let caller = match bearer {
            Some(t) if t == st.token => Some(None),
            Some(t) => st
                .identities
                .iter()
                .find(|i| i.token == t)
                .map(|i| Some(i.clone())),
            None => None,
        };
        (caller, st.fault)
    };
    let authorized = caller.is_some();
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
    let not_found_path = || {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    match segs.as_slice() {
        ["version"] => {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sdnlink-sim",
                        "platform": "linux/amd64", "gitCommit": "", "gitTreeState": "clean",
                        "buildDate": "", "goVersion": "", "compiler": "gc"}),
            )
        }
        ["api"] => return api_versions(inner),
        ["apis"] => return api_groups(inner),
        _ => {}
    }
    // Split into group/version prefix and the rest.
    let (gv, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("api/v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return not_found_path(),
    };
    if rest.is_empty() {
        return discovery(inner, &gv);
    }
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return not_found_path(),
    };
    let Some(res) = Res::from_path(&gv, plural) else {
        return not_found_path();
    };
    if res.openshift_only() && !inner.lock().openshift {
        return not_found_path();
    }
    let route = Route {
        res,
        ns: if res.namespaced() { ns } else { None },
        name,
    };
    let dry_run = query.get("dryRun").is_some_and(|d| !d.is_empty());
    let method = req.method().clone();
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if let Some(Some(identity)) = &caller {
        let verb = match (&method, route.name) {
            (&Method::GET, None) if watching => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "",
        };
        let group = res.api_version().rsplit_once('/').map_or("", |(g, _)| g);
        let asked = rbac::Request {
            verb,
            group,
            resource: res.plural(),
            namespace: route.ns,
            name: route.name,
        };
        if !identity.role.allows(&asked) {
            inner.lock().denials += 1;
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                rbac::denial(&identity.user, &asked),
            );
        }
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return bad_request(e.to_string()),
        }
    } else {
        Bytes::new()
    };
    let key = |name: &str| (res, route.ns.unwrap_or("").to_string(), name.to_string());
    match (method, route.name) {
        (Method::GET, None) => {
            let selector = match Selector::parse(&query) {
                Ok(s) => s,
                Err(e) => return bad_request(e),
            };
            if watching {
                watch_response(inner, res, route.ns, &query, selector)
            } else {
                list(inner, res, route.ns, &query, &selector)
            }
        }
        (Method::GET, Some(name)) => {
            let key = key(name);
            match inner.lock().objects.get(&key) {
                Some(o) => json_response(StatusCode::OK, o),
                None => not_found(&key),
            }
        }
        (Method::POST, None) if res.namespaced() && route.ns.is_none() => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("create {plural} in a namespace: POST /{gv}/namespaces/NS/{plural}"),
        ),
        (Method::POST, None) => create(inner, &route, &body, dry_run),
        (Method::PUT, Some(name)) => update(inner, &route, key(name), &body, dry_run),
        (Method::PATCH, Some(name)) => patch(inner, key(name), &content_type, &body, dry_run),
        (Method::DELETE, Some(name)) => delete(inner, key(name), &body, dry_run),
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the simulated API server".into(),
        ),
    }
}

fn api_versions(inner: &Inner) -> Response<Body> {
    let addr = inner
        .socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]}),
    )
}

fn api_groups(inner: &Inner) -> Response<Body> {
    let openshift = inner.lock().openshift;
    let mut groups: Vec<&str> = Res::ALL
        .into_iter()
        .filter(|r| !r.openshift_only() || openshift)
        .map(Res::api_version)
        .filter(|gv| gv.contains('/'))
        .collect();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|gv| {
            let (g, v) = gv.split_once('/').unwrap_or((gv, ""));
            let version = json!({"groupVersion": gv, "version": v});
            json!({"name": g, "versions": [version.clone()], "preferredVersion": version})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

fn discovery(inner: &Inner, gv: &str) -> Response<Body> {
    let openshift = inner.lock().openshift;
    let resources: Vec<Value> = Res::ALL
        .into_iter()
        .filter(|r| Res::from_path(gv, r.plural()) == Some(*r))
        .filter(|r| !r.openshift_only() || openshift)
        .map(|r| {
            let short: &[&str] = match r {
                Res::Services => &["svc"],
                Res::Nodes => &["no"],
                _ => &[],
            };
            json!({"name": r.plural(), "singularName": r.kind().to_lowercase(), "namespaced": r.namespaced(),
                   "kind": r.kind(), "shortNames": short,
                   "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
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

/// One requirement of a label or field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

/// `labelSelector` and `fieldSelector` (equality, inequality and existence; the set forms
/// `in`/`notin` are refused). Fields: `metadata.name`, `metadata.namespace`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Selector {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

impl Selector {
    fn parse(query: &BTreeMap<String, String>) -> Result<Selector, String> {
        let reqs = |text: Option<&String>, fields: bool| -> Result<Vec<Req>, String> {
            let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
                return Ok(Vec::new());
            };
            text.split(',')
                .map(|part| {
                    let part = part.trim();
                    let req = if let Some((k, v)) = part.split_once("!=") {
                        Req::Ne(k.trim().into(), v.trim().into())
                    } else if let Some((k, v)) =
                        part.split_once("==").or_else(|| part.split_once('='))
                    {
                        Req::Eq(k.trim().into(), v.trim().into())
                    } else if part.contains(' ') || part.contains('(') {
                        return Err(format!(
                            "selector {part:?}: only =, == and != (and existence) are supported"
                        ));
                    } else if let Some(k) = part.strip_prefix('!') {
                        Req::Absent(k.into())
                    } else {
                        Req::Exists(part.into())
                    };
                    let key = match &req {
                        Req::Eq(k, _) | Req::Ne(k, _) | Req::Exists(k) | Req::Absent(k) => k,
                    };
                    if fields && !matches!(key.as_str(), "metadata.name" | "metadata.namespace")
                    {
                        return Err(format!(
                            "field selector {part:?}: only metadata.name and metadata.namespace are supported"
                        ));
                    }
                    Ok(req)
                })
                .collect()
        };
        Ok(Selector {
            labels: reqs(query.get("labelSelector"), false)?,
            fields: reqs(query.get("fieldSelector"), true)?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let holds = |r: &Req, get: &dyn Fn(&str) -> Option<String>| match r {
            Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
            Req::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
            Req::Exists(k) => get(k).is_some(),
            Req::Absent(k) => get(k).is_none(),
        };
        let label = |k: &str| {
            meta["labels"]
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let field = |k: &str| {
            let v = if k == "metadata.name" {
                &meta["name"]
            } else {
                &meta["namespace"]
            };
            Some(v.as_str().unwrap_or("").to_string())
        };
        self.labels.iter().all(|r| holds(r, &label)) && self.fields.iter().all(|r| holds(r, &field))
    }
}

fn list(
    inner: &Inner,
    res: Res,
    ns: Option<&str>,
    query: &BTreeMap<String, String>,
    selector: &Selector,
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
                return bad_request("bad continue token".into());
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
        .filter(|(_, v)| selector.matches(v))
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
    selector: Selector,
) -> Response<Body> {
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let ns = ns.map(str::to_string);
    let filter_ns = ns.clone();
    let sel = selector.clone();
    let matches = move |e: &Event| {
        e.res == res
            && filter_ns.as_ref().is_none_or(|n| *n == e.namespace)
            && sel.matches(&e.object)
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (backlog, start_rv, live, gone_line) = {
        let st = inner.lock();
        let from = match query.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(v) => Some(v.parse::<u64>().unwrap_or(0)),
        };
        match from {
            _ if st.fault == Fault::Gone => (
                Vec::new(),
                st.rv,
                None,
                Some(watch_line("ERROR", &gone(from.unwrap_or(st.rv), st.rv + 1))),
            ),
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
                    .filter(|(_, v)| selector.matches(v))
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

/// The request body as an object: JSON, or YAML for hand-made requests.
fn decode_body(body: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    admit::parse(text).map_err(|(_, e)| e)
}

/// The stored object's resourceVersion.
fn resource_version(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
}

/// Admits a body for `route`'s resource and keys it (the path's namespace wins, and must agree).
fn admit_for(res: Res, ns: Option<&str>, obj: Value) -> Result<(Key, Value), String> {
    match admit::admit(&obj)? {
        r if r == res => normalise(res, obj, ns),
        r => Err(format!(
            "the object is a {} ({}), this is the {} endpoint",
            r.kind(),
            r.api_version(),
            res.plural()
        )),
    }
}

/// Fields the server sets: a client's values are dropped on create and kept from the stored
/// object on update.
const SERVER_FIELDS: [&str; 3] = ["uid", "creationTimestamp", "resourceVersion"];

fn create(inner: &Inner, route: &Route<'_>, body: &[u8], dry_run: bool) -> Response<Body> {
    let obj = match decode_body(body) {
        Ok(o) => o,
        Err(e) => return bad_request(e),
    };
    let (key, mut obj) = match admit_for(route.res, route.ns, obj) {
        Ok(k) => k,
        Err(e) => return bad_request(e),
    };
    if let Some(m) = obj["metadata"].as_object_mut() {
        for f in SERVER_FIELDS {
            m.remove(f);
        }
    }
    let mut st = inner.lock();
    if st.objects.contains_key(&key) {
        return object_status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &key,
            format!("{} {:?} already exists", key.0.plural(), key.2),
        );
    }
    if dry_run {
        return json_response(StatusCode::CREATED, &obj);
    }
    commit(inner, &mut st, key.clone(), "ADDED", obj);
    stored(&st, &key, StatusCode::CREATED)
}

fn stored(st: &Store, key: &Key, code: StatusCode) -> Response<Body> {
    match st.objects.get(key) {
        Some(o) => json_response(code, o),
        None => not_found(key),
    }
}

fn update(
    inner: &Inner,
    route: &Route<'_>,
    key: Key,
    body: &[u8],
    dry_run: bool,
) -> Response<Body> {
    let obj = match decode_body(body) {
        Ok(o) => o,
        Err(e) => return bad_request(e),
    };
    let (body_key, mut obj) = match admit_for(route.res, route.ns, obj) {
        Ok(k) => k,
        Err(e) => return bad_request(e),
    };
    if body_key != key {
        return bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            body_key.2, key.2
        ));
    }
    let mut st = inner.lock();
    let Some(current) = st.objects.get(&key) else {
        return not_found(&key);
    };
    // Optimistic concurrency: an update names the version it read; an older one conflicts.
    if let Some(rv) = resource_version(&obj) {
        if Some(rv) != resource_version(current) {
            return conflict(&key);
        }
    }
    let keep: Vec<(&str, Value)> = SERVER_FIELDS
        .iter()
        .filter_map(|f| current["metadata"].get(*f).map(|v| (*f, v.clone())))
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        for (f, v) in keep {
            m.insert(f.into(), v);
        }
    }
    if dry_run {
        return json_response(StatusCode::OK, &obj);
    }
    commit(inner, &mut st, key.clone(), "MODIFIED", obj);
    stored(&st, &key, StatusCode::OK)
}

fn patch(
    inner: &Inner,
    key: Key,
    content_type: &str,
    body: &[u8],
    dry_run: bool,
) -> Response<Body> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let p: Value = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("patch body: {e}")),
    };
    let mut st = inner.lock();
    let Some(current) = st.objects.get(&key) else {
        return not_found(&key);
    };
    let mut obj = current.clone();
    let applied = match media {
        "application/merge-patch+json" => {
            json_patch::merge(&mut obj, &p);
            Ok(())
        }
        "application/strategic-merge-patch+json" => patch::strategic(key.0.kind(), &mut obj, &p),
        "application/json-patch+json" => serde_json::from_value::<json_patch::Patch>(p.clone())
            .map_err(|e| format!("JSON patch: {e}"))
            .and_then(|ops| json_patch::patch(&mut obj, &ops.0).map_err(|e| e.to_string())),
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "patch type {other:?} not supported by the simulated API server (merge, strategic merge and JSON patch are)"
                ),
            )
        }
    };
    if let Err(e) = applied {
        return invalid(&key, e);
    }
    // A patch that names a resourceVersion is conditional on it (kubectl's --resource-version).
    if resource_version(&obj) != resource_version(current) {
        return conflict(&key);
    }
    if let Err(e) = admit::admit(&obj) {
        return invalid(&key, e);
    }
    match normalise(key.0, obj, Some(key.1.as_str()).filter(|n| !n.is_empty())) {
        Ok((k, o)) if k == key => {
            if dry_run {
                return json_response(StatusCode::OK, &o);
            }
            commit(inner, &mut st, key.clone(), "MODIFIED", o);
            stored(&st, &key, StatusCode::OK)
        }
        Ok((k, _)) => invalid(
            &key,
            format!("metadata.name: field is immutable (patched to {:?})", k.2),
        ),
        Err(e) => invalid(&key, e),
    }
}

fn delete(inner: &Inner, key: Key, body: &[u8], dry_run: bool) -> Response<Body> {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(format!("DeleteOptions: {e}")),
        }
    };
    let mut st = inner.lock();
    let Some(current) = st.objects.get(&key).cloned() else {
        return not_found(&key);
    };
    let pre = &opts["preconditions"];
    for (field, want) in [
        ("resourceVersion", &pre["resourceVersion"]),
        ("uid", &pre["uid"]),
    ] {
        if let Some(want) = want.as_str() {
            let have = current["metadata"][field].as_str().unwrap_or("");
            if want != have {
                return object_status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &key,
                    format!(
                        "Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}"
                    ),
                );
            }
        }
    }
    let uid = current["metadata"]["uid"].clone();
    if !dry_run {
        commit(inner, &mut st, key.clone(), "DELETED", current);
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": key.2, "kind": key.0.plural(), "uid": uid}}),
    )
}

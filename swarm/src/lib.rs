//! Peer discovery for berth: who holds which digest, and where their HTTP API is.
//!
//! The principal type is [`Swarm`], a cloneable handle to one libp2p swarm task, configured
//! by [`SwarmConfig`], reporting through [`Swarm::providers`] and [`Swarm::peers`].
//!
//! Design (see docs/ARCHITECTURE.md, "swarm"):
//! - Transports: QUIC (`/udp/<port>/quic-v1`, quinn) and TCP + noise + yamux
//!   (`/tcp/<port>`); a node listens on whichever addresses it is given, and libp2p dials
//!   a peer's known addresses concurrently and keeps the first connection that succeeds;
//!   TCP is the fallback where UDP is blocked.
//! - libp2p carries only control traffic: Kademlia provider records (key = the digest
//!   string), identify (listen addresses, fed into Kademlia, and the node's HTTP address in
//!   `agent_version` as `berth/<version> http=<host:port>`), optional mDNS. Piece bytes move
//!   over the peers' ordinary registry HTTP API, so the normal `/v2/` auth applies to them.
//! - Kademlia runs in server mode (FIELD-NOTES: client mode answers nothing on loopback).
//! - Bootstrap addresses are re-dialled every [`BOOTSTRAP_REDIAL`] while not connected, so
//!   nodes may start in any order.
//!
//! Invariants: this crate knows no HTTP API of ours and no storage; every queue and table is
//! bounded by a named constant; peer-supplied data (agent strings, addresses) never panics.
#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::kad::{self, GetProvidersOk, Mode, QueryId, QueryResult, RecordKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

pub use libp2p::Multiaddr as Addr;
pub use libp2p::PeerId as Id;

/// Keys this node announces at most (Kademlia's default of 1,024 is far too few for a
/// registry: one key per blob).
pub const PROVIDED_KEYS_MAX: usize = 1 << 20;
/// Records held for others (provider records of other nodes' blobs).
pub const RECORDS_MAX: usize = 1 << 20;
/// Peers remembered in the peer table (the `peers` listing).
pub const PEERS_MAX: usize = 4096;
/// Commands queued towards the swarm task.
pub const COMMAND_QUEUE_DEPTH: usize = 1024;
/// Provider lookups in flight at once; more wait in the command queue.
pub const LOOKUPS_MAX: usize = 256;
/// Providers returned for one lookup.
pub const PROVIDERS_MAX: usize = 32;
/// How often unconnected bootstrap addresses are dialled again.
pub const BOOTSTRAP_REDIAL: Duration = Duration::from_secs(2);
/// The Kademlia protocol name (berth nodes form their own DHT).
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/berth/kad/1.0.0");
/// The identify protocol version.
const ID_PROTOCOL: &str = "/berth/id/1.0.0";

/// Settings of the peer layer.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Addresses to listen on, e.g. `/ip4/127.0.0.1/tcp/4001`.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start (re-dialled until connected).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS (multicast: off by default).
    pub mdns: bool,
    /// This node's registry HTTP address (`host:port`), told to peers through identify.
    pub http_addr: String,
}

/// Why the swarm could not start.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The transport or a behaviour failed to build.
    #[error("building the libp2p swarm: {0}")]
    Build(String),
    /// A listen address could not be bound.
    #[error("listening on {addr}: {detail}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What went wrong.
        detail: String,
    },
}

/// A node that announced a digest, with where to fetch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// Its libp2p identity.
    pub peer: PeerId,
    /// Its registry HTTP address (`host:port`), when identify told us.
    pub http_addr: Option<String>,
}

/// What we know about one peer.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// Its libp2p listen addresses (from identify).
    pub addrs: Vec<Multiaddr>,
    /// Its registry HTTP address (`host:port`).
    pub http_addr: Option<String>,
    /// Whether a connection is open.
    pub connected: bool,
    /// Distinct keys we saw it provide in lookups (bounded by [`PROVIDED_KEYS_MAX`]).
    pub provides: usize,
}

enum Command {
    Provide(String),
    Providers {
        key: String,
        deadline: Instant,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

#[derive(Default)]
struct PeerEntry {
    info: PeerInfo,
    keys: HashSet<String>,
}

type PeerTable = Arc<Mutex<HashMap<PeerId, PeerEntry>>>;

/// A handle to the running swarm task. Dropping every handle stops the task.
#[derive(Clone)]
pub struct Swarm {
    commands: mpsc::Sender<Command>,
    local: PeerId,
    peers: PeerTable,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parses the HTTP address out of an identify agent string (`berth/0.1.0 http=host:port`).
pub fn http_addr_from_agent(agent: &str) -> Option<String> {
    agent
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .filter(|a| !a.is_empty() && a.len() <= 255 && !a.contains(['/', '@']))
        .map(str::to_owned)
}

impl Swarm {
    /// Builds the swarm, binds the listen addresses and spawns its task on the current tokio
    /// runtime.
    pub fn start(config: SwarmConfig) -> Result<Swarm, SwarmError> {
        let key = Keypair::generate_ed25519();
        let local = key.public().to_peer_id();
        let agent = format!(
            "berth/{} http={}",
            env!("CARGO_PKG_VERSION"),
            config.http_addr
        );
        let mdns_on = config.mdns;
        let build = |e: &dyn std::fmt::Display| SwarmError::Build(e.to_string());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(&e))?
            .with_quic()
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                let store = MemoryStore::with_config(
                    id,
                    MemoryStoreConfig {
                        max_records: RECORDS_MAX,
                        max_provided_keys: PROVIDED_KEYS_MAX,
                        ..MemoryStoreConfig::default()
                    },
                );
                let mut kcfg = kad::Config::new(KAD_PROTOCOL);
                kcfg.set_query_timeout(Duration::from_secs(10));
                let mut kad = kad::Behaviour::with_config(id, store, kcfg);
                kad.set_mode(Some(Mode::Server));
                let identify = identify::Behaviour::new(
                    identify::Config::new(ID_PROTOCOL.into(), key.public())
                        .with_agent_version(agent.clone()),
                );
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?)
                } else {
                    None
                };
                Ok(Behaviour {
                    kad,
                    identify,
                    mdns: Toggle::from(mdns),
                })
            })
            .map_err(|e| build(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| SwarmError::Listen {
                    addr: addr.clone(),
                    detail: e.to_string(),
                })?;
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let peers: PeerTable = Arc::default();
        let task = Task {
            swarm,
            peers: peers.clone(),
            lookups: HashMap::new(),
            bootstrap: config.bootstrap,
        };
        let span = tracing::info_span!("swarm", peer = %local);
        tokio::spawn(tracing::Instrument::instrument(task.run(rx), span));
        Ok(Swarm {
            commands: tx,
            local,
            peers,
        })
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Announces that this node holds (or is fetching) `key`. Never blocks: when the command
    /// queue is full the announcement is dropped and `false` returned (the caller retries).
    pub fn provide(&self, key: &str) -> bool {
        self.commands
            .try_send(Command::Provide(key.to_owned()))
            .is_ok()
    }

    /// Nodes that announced `key` (never this node), as found within `timeout`.
    pub async fn providers(&self, key: &str, timeout: Duration) -> Vec<Provider> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Providers {
            key: key.to_owned(),
            deadline: Instant::now() + timeout,
            reply,
        };
        if self.commands.send(cmd).await.is_err() {
            return Vec::new();
        }
        // The task answers at the deadline (or earlier, when the query ends).
        let found = match tokio::time::timeout(timeout + Duration::from_millis(500), rx).await {
            Ok(Ok(found)) => found,
            _ => Vec::new(),
        };
        found
            .into_iter()
            .filter(|p| *p != self.local)
            .take(PROVIDERS_MAX)
            .map(|peer| Provider {
                http_addr: self.http_addr(&peer),
                peer,
            })
            .collect()
    }

    fn http_addr(&self, peer: &PeerId) -> Option<String> {
        lock(&self.peers)
            .get(peer)
            .and_then(|e| e.info.http_addr.clone())
    }

    /// Known peers (bounded by [`PEERS_MAX`]).
    pub fn peers(&self) -> Vec<(PeerId, PeerInfo)> {
        lock(&self.peers)
            .iter()
            .map(|(id, e)| {
                let mut info = e.info.clone();
                info.provides = e.keys.len();
                (*id, info)
            })
            .collect()
    }
}

struct Lookup {
    key: String,
    deadline: Instant,
    found: Vec<PeerId>,
    reply: oneshot::Sender<Vec<PeerId>>,
}

struct Task {
    swarm: libp2p::Swarm<Behaviour>,
    peers: PeerTable,
    lookups: HashMap<QueryId, Lookup>,
    bootstrap: Vec<Multiaddr>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut redial = tokio::time::interval(BOOTSTRAP_REDIAL);
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tokio::select! {
                cmd = rx.recv(), if self.lookups.len() < LOOKUPS_MAX => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = redial.tick() => self.redial(),
                _ = tick.tick() => self.expire(),
            }
        }
        tracing::info!("swarm stopped");
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Provide(key) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(RecordKey::new(&key))
                {
                    tracing::warn!(key, error = %e, "cannot announce");
                }
            }
            Command::Providers {
                key,
                deadline,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(RecordKey::new(&key));
                self.lookups.insert(
                    id,
                    Lookup {
                        key,
                        deadline,
                        found: Vec::new(),
                        reply,
                    },
                );
            }
        }
    }

    /// Answers lookups whose deadline passed with what they found so far.
    fn expire(&mut self) {
        let now = Instant::now();
        let done: Vec<QueryId> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
            self.answer(id);
        }
    }

    fn answer(&mut self, id: QueryId) {
        if let Some(l) = self.lookups.remove(&id) {
            let mut peers = lock(&self.peers);
            for p in &l.found {
                if let Some(e) = peers.get_mut(p) {
                    if e.keys.len() < PROVIDED_KEYS_MAX {
                        e.keys.insert(l.key.clone());
                    }
                }
            }
            drop(peers);
            let _ = l.reply.send(l.found);
        }
    }

    fn redial(&mut self) {
        let connected: HashSet<Multiaddr> = {
            let peers = lock(&self.peers);
            peers
                .values()
                .filter(|e| e.info.connected)
                .flat_map(|e| e.info.addrs.iter().cloned())
                .collect()
        };
        for addr in self.bootstrap.clone() {
            if !connected.contains(&addr) {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, error = %e, "bootstrap dial failed");
                }
            }
        }
    }

    fn entry(peers: &mut HashMap<PeerId, PeerEntry>, peer: PeerId) -> Option<&mut PeerEntry> {
        if !peers.contains_key(&peer) && peers.len() >= PEERS_MAX {
            return None;
        }
        Some(peers.entry(peer).or_default())
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let mut peers = lock(&self.peers);
                if let Some(e) = Self::entry(&mut peers, peer_id) {
                    e.info.connected = true;
                    if endpoint.is_dialer() {
                        let addr = endpoint.get_remote_address().clone();
                        if !e.info.addrs.contains(&addr) && e.info.addrs.len() < 16 {
                            e.info.addrs.push(addr);
                        }
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(e) = lock(&self.peers).get_mut(&peer_id) {
                    e.info.connected = false;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.identified(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list.into_iter().take(PEERS_MAX) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => self.progress(id, result, step.last),
            _ => {}
        }
    }

    fn identified(&mut self, peer: PeerId, info: identify::Info) {
        let http = http_addr_from_agent(&info.agent_version);
        tracing::debug!(%peer, http = http.as_deref().unwrap_or("-"), "peer identified");
        let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
        for a in &addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        }
        let mut peers = lock(&self.peers);
        if let Some(e) = Self::entry(&mut peers, peer) {
            e.info.http_addr = http;
            for a in addrs {
                if !e.info.addrs.contains(&a) && e.info.addrs.len() < 16 {
                    e.info.addrs.push(a);
                }
            }
        }
    }

    fn progress(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })) => {
                if let Some(l) = self.lookups.get_mut(&id) {
                    for p in providers {
                        if !l.found.contains(&p) && l.found.len() < PROVIDERS_MAX {
                            l.found.push(p);
                        }
                    }
                }
            }
            QueryResult::StartProviding(Err(e)) => {
                tracing::debug!(error = ?e, "announcement reached no peer");
            }
            _ => {}
        }
        if last && self.lookups.contains_key(&id) {
            self.answer(id);
        }
    }
}

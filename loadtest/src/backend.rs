//! One connection to either system, behind one interface, for the scenarios
//! that are not plain throughput (`latency`, `connections`): connect,
//! subscribe, publish, request, reply, receive in batches, close.
//!
//! The throughput scenarios keep their own tuned loops in `slim.rs` and
//! `nats.rs`; everything here is the same code path for both systems apart
//! from the few lines in each `match`.
//!
//! Request/reply: on SLIM a request is an anycast publish and the reply a
//! unicast publish to the requester's full name (`Delivery::from`); on NATS a
//! request carries a reply subject (the requester's inbox, subscribed once)
//! and the reply is a plain publish to it. Neither uses the client library's
//! own request helper, so requests can be pipelined open-loop.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use async_nats::{Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::SelectAll;
use slim_client::{Client, ClientConfig, Event};
use slim_wire::Name;

use crate::nats::{self, Events};
use crate::slim::Identities;

/// A name on both systems: the SLIM name and the NATS subject with '.' for '/'.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: Name,
    pub subject: Subject,
}

impl Topic {
    pub fn new(s: &str) -> Result<Self> {
        let name = Name::parse(s).with_context(|| format!("name {s:?}"))?;
        Ok(Topic {
            name,
            subject: Subject::from(s.replace('/', ".")),
        })
    }
}

/// The system under test and how to reach it.
#[derive(Clone)]
pub enum Backend {
    Slim {
        addr: SocketAddr,
        ids: Arc<Identities>,
        run_id: String,
    },
    Nats {
        url: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        events: Arc<Events>,
    },
}

/// Everything needed to connect, made ahead of time so that SVID issuance
/// is not part of a timed connect.
pub enum Prepared {
    Slim(Box<ClientConfig>),
    Nats {
        url: String,
        name: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        events: Arc<Events>,
    },
}

impl Backend {
    pub fn system(&self) -> &'static str {
        match self {
            Backend::Slim { .. } => "slim",
            Backend::Nats { .. } => "nats",
        }
    }

    /// Client-side counters worth reporting (NATS: slow-consumer events etc.).
    pub fn counters(&self) -> Vec<(String, u64)> {
        match self {
            Backend::Slim { .. } => Vec::new(),
            Backend::Nats { events, .. } => events.snapshot(),
        }
    }

    /// Connection `i` in role `role` ("req", "rsp", "c", ...). SLIM: its own
    /// SVID `spiffe://TD/loadtest/{role}-{i}` and name
    /// `loadtest/bench/{role}/{role}{i}-{run}`.
    pub fn prepare(&self, role: &str, i: usize) -> Result<Prepared> {
        match self {
            Backend::Slim { addr, ids, run_id } => {
                let name = Name::new(
                    "loadtest",
                    "bench",
                    role,
                    Some(&format!("{role}{i}-{run_id}")),
                )?;
                let id = ids.get(&format!("loadtest/{role}-{i}"))?;
                Ok(Prepared::Slim(Box::new(ClientConfig::new(*addr, name, id))))
            }
            Backend::Nats { url, tls, events } => Ok(Prepared::Nats {
                url: url.clone(),
                name: format!("loadtest-{role}-{i}"),
                tls: tls.clone(),
                events: Arc::clone(events),
            }),
        }
    }

    pub async fn connect(&self, role: &str, i: usize) -> Result<Conn> {
        self.prepare(role, i)?.connect().await
    }
}

impl Prepared {
    pub async fn connect(self) -> Result<Conn> {
        match self {
            Prepared::Slim(cfg) => {
                let node = cfg.node;
                let c = Arc::new(
                    Client::connect(*cfg)
                        .await
                        .with_context(|| format!("connecting to {node}"))?,
                );
                Ok(Conn {
                    tx: Tx::Slim(Arc::clone(&c)),
                    rx: Rx::Slim(c),
                })
            }
            Prepared::Nats {
                url,
                name,
                tls,
                events,
            } => {
                let c = nats::connect(&url, tls.as_deref(), &events, name).await?;
                Ok(Conn {
                    tx: Tx::Nats {
                        client: c,
                        inbox: None,
                    },
                    rx: Rx::Nats(SelectAll::new()),
                })
            }
        }
    }
}

/// Where a reply goes.
#[derive(Debug, Clone)]
pub enum ReplyTo {
    Slim(Name),
    Nats(Option<Subject>),
}

/// Something received.
#[derive(Debug)]
pub enum Incoming {
    Msg {
        payload: Bytes,
        reply: ReplyTo,
    },
    /// SLIM: an error the node reported about something this client sent.
    Error(String),
}

/// The sending half (cheap to clone).
#[derive(Clone)]
pub enum Tx {
    Slim(Arc<Client>),
    Nats {
        client: async_nats::Client,
        /// The subject replies come back on (requesters only).
        inbox: Option<Subject>,
    },
}

/// The receiving half.
pub enum Rx {
    Slim(Arc<Client>),
    /// Every subscription of the connection, merged.
    Nats(SelectAll<Subscriber>),
}

/// A connection.
pub struct Conn {
    pub tx: Tx,
    pub rx: Rx,
}

impl Conn {
    /// Subscribes to `topic` (multicast semantics on both). SLIM waits for
    /// the node's acknowledgement; NATS only queues the SUB: call
    /// [`Conn::sync`] before relying on it.
    pub async fn subscribe(&mut self, topic: &Topic) -> Result<()> {
        match (&self.tx, &mut self.rx) {
            (Tx::Slim(c), _) => c
                .subscribe(&topic.name)
                .await
                .with_context(|| format!("subscribing to {}", topic.name)),
            (Tx::Nats { client, .. }, Rx::Nats(subs)) => {
                let s = client
                    .subscribe(topic.subject.clone())
                    .await
                    .with_context(|| format!("subscribing to {}", topic.subject))?;
                subs.push(s);
                Ok(())
            }
            _ => unreachable!("halves of one connection are of one system"),
        }
    }

    /// Returns once the server has processed everything sent so far
    /// (NATS: PING/PONG; SLIM: subscriptions are already acknowledged).
    pub async fn sync(&self) -> Result<()> {
        match &self.tx {
            Tx::Slim(_) => Ok(()),
            Tx::Nats { client, .. } => client.flush().await.context("flush"),
        }
    }

    /// Makes this connection a requester: NATS subscribes to an inbox that
    /// [`Tx::request`] names as the reply subject; SLIM needs nothing (the
    /// reply is unicast to this client's registered full name).
    pub async fn make_requester(&mut self) -> Result<()> {
        if let (Tx::Nats { client, inbox }, Rx::Nats(subs)) = (&mut self.tx, &mut self.rx) {
            let subject = Subject::from(client.new_inbox());
            subs.push(
                client
                    .subscribe(subject.clone())
                    .await
                    .context("subscribing to the reply inbox")?,
            );
            client.flush().await.context("flush")?;
            *inbox = Some(subject);
        }
        Ok(())
    }

    /// Closes gracefully (SLIM: flush then close; NATS: drain).
    pub async fn close(self) {
        let Conn { tx, rx } = self;
        drop(rx);
        match tx {
            Tx::Slim(c) => match Arc::try_unwrap(c) {
                Ok(c) => c.close().await,
                Err(c) => drop(c),
            },
            Tx::Nats { client, .. } => {
                let _ = client.drain().await;
            }
        }
    }
}

impl Tx {
    /// A request to `topic`: SLIM anycast (one responder), NATS with this
    /// connection's inbox as the reply subject.
    pub async fn request(&self, topic: &Topic, payload: &[u8]) -> Result<()> {
        match self {
            Tx::Slim(c) => {
                c.publish(&topic.name, slim_wire::Mode::Anycast, payload)
                    .await
                    .context("publish")?;
            }
            Tx::Nats { client, inbox } => {
                let Some(inbox) = inbox else {
                    bail!("request on a connection that is not a requester")
                };
                client
                    .publish_with_reply(
                        topic.subject.clone(),
                        inbox.clone(),
                        Bytes::copy_from_slice(payload),
                    )
                    .await
                    .context("publish")?;
            }
        }
        Ok(())
    }

    /// Sends `payload` back to whoever sent a request.
    pub async fn reply(&self, to: &ReplyTo, payload: Bytes) -> Result<()> {
        match (self, to) {
            (Tx::Slim(c), ReplyTo::Slim(from)) => {
                c.publish(from, slim_wire::Mode::Unicast, &payload)
                    .await
                    .context("publish reply")?;
            }
            (Tx::Nats { client, .. }, ReplyTo::Nats(Some(subject))) => {
                client
                    .publish(subject.clone(), payload)
                    .await
                    .context("publish reply")?;
            }
            (Tx::Nats { .. }, ReplyTo::Nats(None)) => bail!("request without a reply subject"),
            _ => unreachable!("a reply goes out on the system it came from"),
        }
        Ok(())
    }
}

impl Rx {
    /// Waits for at least one message and returns up to `max` in `out`; 0
    /// once the connection (or every subscription) is closed.
    pub async fn recv_batch(&mut self, out: &mut Vec<Incoming>, max: usize) -> usize {
        match self {
            Rx::Slim(c) => {
                let mut evs = Vec::with_capacity(max.min(1024));
                let n = c.recv_many(&mut evs, max).await;
                out.extend(evs.into_iter().map(|e| match e {
                    Event::Message(d) => Incoming::Msg {
                        payload: d.payload,
                        reply: ReplyTo::Slim(d.from),
                    },
                    Event::Error(e) => {
                        Incoming::Error(format!("{}: {}", e.code.as_str(), e.reason))
                    }
                }));
                n
            }
            Rx::Nats(subs) => {
                if subs.is_empty() {
                    // Nothing subscribed yet: nothing will ever arrive.
                    return futures::future::pending().await;
                }
                let Some(first) = subs.next().await else {
                    return 0;
                };
                let mut n = 1;
                out.push(Incoming::Msg {
                    payload: first.payload,
                    reply: ReplyTo::Nats(first.reply),
                });
                while n < max {
                    match futures::FutureExt::now_or_never(subs.next()) {
                        Some(Some(m)) => {
                            out.push(Incoming::Msg {
                                payload: m.payload,
                                reply: ReplyTo::Nats(m.reply),
                            });
                            n += 1;
                        }
                        _ => break,
                    }
                }
                n
            }
        }
    }
}

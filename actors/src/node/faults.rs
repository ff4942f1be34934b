//! Fault injection for supervision and control-channel tests (feature
//! `test-util`): kept out of the node's production surface.

use std::sync::Arc;

use super::{ChildKind, NodeHandle, SupMsg};

/// An actor to kill in a supervision test.
#[cfg(feature = "test-util")]
#[derive(Debug, Clone, Copy)]
pub enum Victim<'a> {
    Child(ChildKind),
    /// The connection task of the client registered under this full name
    /// (a task, not an actor: "killed" by a panic in it).
    Connection(&'a str),
    /// The link actor(s) of this peer node.
    Link(&'a str),
}

/// Fault injection, for tests only (feature `test-util`).
#[cfg(feature = "test-util")]
impl NodeHandle {
    /// Fault injection for supervision tests: makes the task of the
    /// connection registered as `name` panic. Returns false if none is found
    /// (or its control channel is full).
    pub fn inject_connection_panic(&self, name: &str) -> bool {
        self.conn_named(name)
            .is_some_and(|c| c.ctl.push(crate::conn::shared::Ctl::InjectPanic).is_ok())
    }

    /// For tests of the control channel: makes the task of the connection
    /// registered as `name` take no request until the returned sender is
    /// dropped, and fills its control channel behind that hold, so that the
    /// next request finds it full. None if no such connection is found.
    pub async fn hold_connection_control(
        &self,
        name: &str,
    ) -> Option<tokio::sync::oneshot::Sender<()>> {
        use crate::conn::shared::Ctl;
        let c = self.conn_named(name)?;
        let (release, until) = tokio::sync::oneshot::channel();
        let (held_tx, held) = tokio::sync::oneshot::channel();
        c.ctl
            .push_wait(Ctl::Hold {
                held: held_tx,
                until,
            })
            .await
            .ok()?;
        // Once the task holds, nothing leaves the channel: fill it.
        held.await.ok()?;
        while c.ctl.push(Ctl::Nothing).is_ok() {}
        Some(release)
    }

    fn conn_named(&self, name: &str) -> Option<Arc<crate::conn::ConnShared>> {
        self.ctx
            .conns
            .iter()
            .find(|c| c.name.as_str() == name)
            .map(|c| Arc::clone(c.value()))
    }

    /// Fault injection for link tests: closes the live connection of every
    /// link to `peer_node_id` (as a network failure would end it). Returns
    /// how many were closed.
    pub fn inject_link_failure(&self, peer_node_id: &str) -> usize {
        let mut n = 0;
        for l in self.ctx.fed.links.iter() {
            if *l.peer_node_id.read() == peer_node_id
                && l.session().is_some()
                && let Some(actor) = l.actor.get()
                && actor
                    .send_message(crate::link::actor::LinkMsg::Close {
                        reason: "injected link failure".into(),
                    })
                    .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Kills an actor the way a crash would (`Signal::Kill`: no `post_stop`
    /// runs, so its supervisor must clean up after it). Returns how many
    /// actors were killed.
    pub async fn kill_actor(&self, victim: Victim<'_>) -> usize {
        let cells: Vec<ractor::ActorCell> = match victim {
            Victim::Child(kind) => ractor::call!(self.supervisor, SupMsg::Children)
                .map(|c| {
                    c.into_iter()
                        .filter(|(k, _)| *k == kind)
                        .map(|(_, cell)| cell)
                        .collect()
                })
                .unwrap_or_default(),
            Victim::Connection(name) => {
                let victims: Vec<_> = self
                    .ctx
                    .conns
                    .iter()
                    .filter(|c| c.name.as_str() == name)
                    .map(|c| Arc::clone(c.value()))
                    .collect();
                let mut n = 0;
                for c in victims {
                    if c.ctl
                        .push_wait(crate::conn::shared::Ctl::InjectPanic)
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
                return n;
            }
            Victim::Link(peer) => self
                .ctx
                .fed
                .links
                .iter()
                .filter(|l| *l.peer_node_id.read() == peer)
                .filter_map(|l| l.actor.get().cloned())
                .collect(),
        };
        for c in &cells {
            c.kill();
        }
        cells.len()
    }
}

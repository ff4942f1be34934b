//! [`GroupCtl`]: a channel handle of either role for the front door's one `Session` type.

use std::time::Duration;

use tokio::sync::mpsc;

use super::driver::{Job, call, publish_on, roster_of};
use super::handles::{ChannelMember, ChannelModerator};
use super::options::Published;
use crate::session::SessionError;
use crate::session::channel::{ChannelConfig, ChannelError, ChannelEvent, MemberInfo};
use crate::session::channel::{Member, Moderator};

/// A channel handle of either role behind shared references, for the front
/// door's one `Session` type: control calls and the event queue are
/// separate, so a task waiting for events does not hold up publishing.
pub(crate) enum GroupCtl {
    Moderator {
        jobs: mpsc::Sender<Job<Moderator>>,
        events: tokio::sync::Mutex<mpsc::Receiver<ChannelEvent>>,
        task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
        progress: tokio::sync::watch::Receiver<u64>,
    },
    Member {
        jobs: parking_lot::Mutex<Option<mpsc::Sender<Job<Member>>>>,
        early: parking_lot::Mutex<std::collections::VecDeque<ChannelEvent>>,
        events: tokio::sync::Mutex<mpsc::Receiver<ChannelEvent>>,
        task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    },
}

impl From<ChannelModerator> for GroupCtl {
    fn from(m: ChannelModerator) -> Self {
        GroupCtl::Moderator {
            jobs: m.jobs,
            events: tokio::sync::Mutex::new(m.events),
            task: tokio::sync::Mutex::new(Some(m.task)),
            progress: m.progress,
        }
    }
}

impl From<ChannelMember> for GroupCtl {
    fn from(m: ChannelMember) -> Self {
        GroupCtl::Member {
            jobs: parking_lot::Mutex::new(Some(m.jobs)),
            early: parking_lot::Mutex::new(m.early),
            events: tokio::sync::Mutex::new(m.events),
            task: tokio::sync::Mutex::new(Some(m.task)),
        }
    }
}

/// Waits for the driver's next batch of events (a membership change comes
/// with one), or a while as a backstop for changes that come without.
async fn wait_progress(progress: &mut tokio::sync::watch::Receiver<u64>) {
    let _ = tokio::time::timeout(Duration::from_millis(250), progress.changed()).await;
}

impl GroupCtl {
    fn member_jobs(
        jobs: &parking_lot::Mutex<Option<mpsc::Sender<Job<Member>>>>,
    ) -> Result<mpsc::Sender<Job<Member>>, ChannelError> {
        jobs.lock().clone().ok_or(ChannelError::Closed)
    }

    pub(crate) async fn publish(&self, payload: &[u8]) -> Result<Published, ChannelError> {
        match self {
            GroupCtl::Moderator { jobs, .. } => publish_on(jobs, payload).await,
            GroupCtl::Member { jobs, .. } => publish_on(&Self::member_jobs(jobs)?, payload).await,
        }
    }

    /// Moderator only (the caller checks the role): invites `name` and waits
    /// until it joined or the invitation failed.
    pub(crate) async fn invite(&self, name: &str) -> Result<(), ChannelError> {
        let GroupCtl::Moderator { jobs, progress, .. } = self else {
            return Err(ChannelError::NotJoined);
        };
        let mut progress = progress.clone();
        progress.mark_unchanged();
        let n = name.to_owned();
        call(jobs, move |m: &mut Moderator, now| m.invite(&n, now)).await??;
        // Wait for the outcome: the roster gains a member of that name, or
        // the invitation fails (reported as an event too; the roster check
        // keeps this independent of who reads the events).
        let deadline = tokio::time::Instant::now() + ChannelConfig::default().join_timeout * 2;
        loop {
            let (members, pending) =
                call(jobs, |m: &mut Moderator, _| (m.members(), m.pending())).await?;
            let matches =
                |mi: &MemberInfo| mi.name == name || mi.name.starts_with(&format!("{name}/"));
            if members.iter().any(matches) && pending == 0 {
                return Ok(());
            }
            if pending == 0 {
                let n = name.to_owned();
                let unroutable = call(jobs, move |m: &mut Moderator, _| {
                    m.take_unroutable_invite(&n)
                })
                .await?;
                if let Some(reason) = unroutable {
                    return Err(ChannelError::Session(SessionError::NoResponder {
                        name: name.to_owned(),
                        reason,
                    }));
                }
                return Err(ChannelError::JoinFailed {
                    reason: format!("the invitation of {name} was declined or not answered"),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ChannelError::JoinFailed {
                    reason: format!("{name} did not join in time"),
                });
            }
            wait_progress(&mut progress).await;
        }
    }

    pub(crate) async fn remove(&self, who: &str) -> Result<(), ChannelError> {
        let GroupCtl::Moderator { jobs, progress, .. } = self else {
            return Err(ChannelError::NotJoined);
        };
        let mut progress = progress.clone();
        progress.mark_unchanged();
        let w = who.to_owned();
        call(jobs, move |m: &mut Moderator, now| {
            m.remove(&w, "removed by the moderator", now)
        })
        .await??;
        // Done when the removal's commit completed (nothing pending).
        let deadline = tokio::time::Instant::now() + ChannelConfig::default().change_timeout * 2;
        while call(jobs, |m: &mut Moderator, _| m.pending()).await? > 0
            && tokio::time::Instant::now() < deadline
        {
            wait_progress(&mut progress).await;
        }
        Ok(())
    }

    pub(crate) async fn members(&self) -> Result<(u64, Vec<MemberInfo>), ChannelError> {
        match self {
            GroupCtl::Moderator { jobs, .. } => roster_of(jobs).await,
            GroupCtl::Member { jobs, .. } => roster_of(&Self::member_jobs(jobs)?).await,
        }
    }

    /// The next event; `None` once the driver ended and all were read.
    pub(crate) async fn recv(&self) -> Option<ChannelEvent> {
        match self {
            GroupCtl::Moderator { events, .. } => events.lock().await.recv().await,
            GroupCtl::Member { events, early, .. } => {
                if let Some(e) = early.lock().pop_front() {
                    return Some(e);
                }
                events.lock().await.recv().await
            }
        }
    }

    /// Moderator: closes the channel; member: leaves. Waits (bounded by the
    /// change timeout) for the driver to finish.
    pub(crate) async fn close(&self, reason: &str) -> Result<(), ChannelError> {
        let task = match self {
            GroupCtl::Moderator { jobs, task, .. } => {
                let reason = reason.to_owned();
                match call(jobs, move |m: &mut Moderator, now| m.close(&reason, now)).await {
                    Ok(r) => r?,
                    Err(ChannelError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                }
                task
            }
            GroupCtl::Member { jobs, task, .. } => {
                let j = jobs.lock().take();
                if let Some(j) = j {
                    let _ = call(&j, |m: &mut Member, now| m.leave(now)).await;
                }
                task
            }
        };
        let handle = task.lock().await.take();
        if let Some(mut h) = handle {
            let bound = ChannelConfig::default().change_timeout + Duration::from_secs(1);
            if tokio::time::timeout(bound, &mut h).await.is_err() {
                tracing::warn!(
                    ?bound,
                    "channel driver did not finish closing in time; stopped"
                );
                h.abort();
            }
        }
        Ok(())
    }
}

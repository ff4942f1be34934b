//! `slimctl channel create|join|members` and `publish --session`: group
//! channels (MLS by default) through the SDK's channel API. Each closes its
//! connection on every way out ([`closing`]).

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use slim_client::channel::{
    Channel, ChannelConfig, ChannelEvent, ChannelMember, ChannelModerator, ChannelOptions,
    MemberInfo,
};
use slim_client::session::SessionMux;
use slim_client::{Client, ClientConfig};
use slim_mls::MlsIdentity;
use slim_wire::Name;

use crate::args::{ConnectArgs, parse_duration};
use crate::output::{Output, print_json};

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The channel (a multicast name, e.g. acme/chat/incident).
    name: String,
    /// Plaintext channel: no MLS (the nodes can read its messages).
    #[arg(long)]
    no_mls: bool,
    /// SPIFFE ID pattern whose holders may join by request (`*` one
    /// segment, trailing `**` the rest); repeatable. None: invitation only.
    #[arg(long = "allow", value_name = "SPIFFE-ID-PATTERN")]
    allow: Vec<String>,
    /// Invite this name (full or service name) at start; repeatable.
    #[arg(long = "invite", value_name = "NAME")]
    invite: Vec<String>,
    /// Remove members that stop answering pings.
    #[arg(long)]
    remove_unresponsive: bool,
    #[command(flatten)]
    conn: ConnectArgs,
}

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// The channel (a multicast name, e.g. acme/chat/incident).
    name: String,
    /// The moderator's full name (else the request is multicast to the channel).
    #[arg(long)]
    moderator: Option<String>,
    /// The channel is plaintext (created with --no-mls).
    #[arg(long)]
    no_mls: bool,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this long without a message.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    conn: ConnectArgs,
}

#[derive(clap::Args, Debug)]
pub struct MembersArgs {
    /// The channel (a multicast name, e.g. acme/chat/incident).
    name: String,
    /// Show the channel's subscribers per node as the controller sees them
    /// (counts, not the MLS roster; needs no identity the moderator admits).
    #[arg(long, conflicts_with = "join")]
    subscribers: bool,
    /// Read the roster by joining: join the group, print its members, leave
    /// (a new epoch and audit entries on every member). Without it the
    /// moderator is asked and nothing changes.
    #[arg(long)]
    join: bool,
    /// The moderator's full name (else the query is multicast to the
    /// channel and the moderator answers).
    #[arg(long)]
    moderator: Option<String>,
    /// With --join: the channel is plaintext (created with --no-mls).
    #[arg(long, requires = "join")]
    no_mls: bool,
    /// How long to wait for the moderator's answer.
    #[arg(long, default_value = "10s", value_parser = crate::args::parse_duration)]
    timeout: std::time::Duration,
    /// The node to connect to [default: 127.0.0.1:4500].
    #[arg(long, env = "SLIMCTL_NODE", value_name = "ADDR")]
    node: Option<String>,
    /// The name this client registers as [default: ops/slimctl/cli].
    #[arg(long = "as", env = "SLIMCTL_NAME", value_name = "NAME")]
    as_name: Option<String>,
    #[command(flatten)]
    ctl: crate::admin::ControllerArgs,
}

/// Connects with the same SVID the MLS credential is bound to.
async fn connect(c: &ConnectArgs) -> Result<(SessionMux, MlsIdentity, Rotation)> {
    let src = c.id.source().await?;
    let rotation = src.subscribe();
    let mls = MlsIdentity::new(&src.current()).context("cannot bind an MLS credential")?;
    let creds = c.id.credentials_from(src);
    let name = Name::parse(&c.as_name()).context("invalid --as name")?;
    let node = c.node();
    let client = Client::connect(ClientConfig::for_url(&node, name, creds).await?)
        .await
        .map_err(|e| crate::args::connect_error(e, &node))?;
    // Non-session deliveries are not ours to print here.
    let (mux, _raw) = SessionMux::new(client);
    Ok((mux, mls, rotation))
}

/// SVID updates from the identity source: channels re-bind their MLS
/// credential on each.
type Rotation = tokio::sync::watch::Receiver<std::sync::Arc<slim_auth::Identity>>;

fn now() -> String {
    time::OffsetDateTime::from(SystemTime::now())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn payload_text(p: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(p) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            (s.to_owned(), "text")
        }
        _ => (p.iter().map(|b| format!("{b:02x}")).collect(), "hex"),
    }
}

#[derive(Serialize)]
struct MessageOut<'a> {
    time: String,
    channel: &'a str,
    from: &'a str,
    spiffe_id: &'a str,
    epoch: u64,
    seq: u64,
    payload: String,
    payload_encoding: &'a str,
}

/// Prints one event; returns true for a message.
fn print_event(channel: &str, e: &ChannelEvent, out: Output) -> Result<bool> {
    let member = |m: &MemberInfo| format!("{} ({})", m.name, m.spiffe_id);
    let (kind, text, json) = match e {
        ChannelEvent::Message {
            sender,
            spiffe_id,
            seq,
            epoch,
            payload,
        } => {
            let (p, enc) = payload_text(payload);
            if out == Output::Json {
                print_json(&MessageOut {
                    time: now(),
                    channel,
                    from: sender,
                    spiffe_id,
                    epoch: *epoch,
                    seq: *seq,
                    payload: p,
                    payload_encoding: enc,
                })?;
            } else {
                let hex = if enc == "hex" { "0x" } else { "" };
                println!("{} {channel} from {sender} [{spiffe_id}]: {hex}{p}", now());
            }
            std::io::stdout().flush()?;
            return Ok(true);
        }
        ChannelEvent::Joined { epoch, members } => (
            "joined",
            format!(
                "joined at epoch {epoch}; members: {}",
                members.iter().map(member).collect::<Vec<_>>().join(", ")
            ),
            serde_json::json!({"epoch": epoch, "members": members.iter().map(|m| serde_json::json!({"name": m.name, "spiffe_id": m.spiffe_id})).collect::<Vec<_>>()}),
        ),
        ChannelEvent::MembersChanged {
            epoch,
            added,
            removed,
        } => (
            "members_changed",
            format!(
                "epoch {epoch}: +[{}] -[{}]",
                added.iter().map(member).collect::<Vec<_>>().join(", "),
                removed.iter().map(member).collect::<Vec<_>>().join(", ")
            ),
            serde_json::json!({"epoch": epoch, "added": added.iter().map(|m| &m.name).collect::<Vec<_>>(), "removed": removed.iter().map(|m| &m.name).collect::<Vec<_>>()}),
        ),
        ChannelEvent::MemberJoined { member: m, epoch } => (
            "member_joined",
            format!("{} joined (epoch {epoch})", member(m)),
            serde_json::json!({"name": m.name, "spiffe_id": m.spiffe_id, "epoch": epoch}),
        ),
        ChannelEvent::CredentialUpdated { member: m, epoch } => (
            "credential_updated",
            format!("{} re-bound its credential (epoch {epoch})", member(m)),
            serde_json::json!({"name": m.name, "spiffe_id": m.spiffe_id, "epoch": epoch}),
        ),
        ChannelEvent::MemberLeft {
            member: m,
            epoch,
            reason,
        } => (
            "member_left",
            format!("{} left (epoch {epoch}): {reason}", member(m)),
            serde_json::json!({"name": m.name, "spiffe_id": m.spiffe_id, "epoch": epoch, "reason": reason}),
        ),
        ChannelEvent::JoinRequestRefused {
            name,
            spiffe_id,
            reason,
        } => (
            "join_refused",
            format!(
                "refused {name} ({}): {reason}",
                spiffe_id.as_deref().unwrap_or("unauthenticated")
            ),
            serde_json::json!({"name": name, "spiffe_id": spiffe_id, "reason": reason}),
        ),
        ChannelEvent::InviteFailed { name, reason } => (
            "invite_failed",
            format!("invitation of {name} failed: {reason}"),
            serde_json::json!({"name": name, "reason": reason}),
        ),
        ChannelEvent::MemberUnresponsive { member: m, missed } => (
            "member_unresponsive",
            format!("{} unresponsive ({missed} missed)", member(m)),
            serde_json::json!({"name": m.name, "spiffe_id": m.spiffe_id, "missed": missed}),
        ),
        ChannelEvent::ModeratorUnresponsive { silent_for } => (
            "moderator_unresponsive",
            format!("nothing from the moderator for {silent_for:?}"),
            serde_json::json!({"silent_ms": silent_for.as_millis() as u64}),
        ),
        ChannelEvent::JoinRefused { reason } => (
            "refused",
            format!("join refused: {reason}"),
            serde_json::json!({"reason": reason}),
        ),
        ChannelEvent::JoinFailed { reason } => (
            "join_failed",
            format!("join failed: {reason}"),
            serde_json::json!({"reason": reason}),
        ),
        ChannelEvent::Removed { reason } => (
            "removed",
            format!("removed from the channel: {reason}"),
            serde_json::json!({"reason": reason}),
        ),
        ChannelEvent::ChannelClosed { reason } => (
            "closed",
            format!("channel closed: {reason}"),
            serde_json::json!({"reason": reason}),
        ),
        ChannelEvent::Denied { reason } => (
            "denied",
            format!("refused by the node's policy: {reason}"),
            serde_json::json!({"reason": reason}),
        ),
        ChannelEvent::Lost { sender, seqs } => (
            "lost",
            format!("{} message(s) from {sender} lost", seqs.len()),
            serde_json::json!({"sender": sender, "seqs": seqs}),
        ),
        ChannelEvent::Rejected { sender, error } => (
            "rejected",
            format!("refused a message from {sender}: {error}"),
            serde_json::json!({"sender": sender, "reason": error.reason(), "error": error.to_string()}),
        ),
    };
    if out == Output::Json {
        let mut v = json;
        if let Some(o) = v.as_object_mut() {
            o.insert("event".into(), kind.into());
            o.insert("time".into(), now().into());
            o.insert("channel".into(), channel.into());
        }
        print_json(&v)?;
        std::io::stdout().flush()?;
    } else {
        eprintln!("{} {channel}: {text}", now());
    }
    Ok(false)
}

/// Runs `body`, then closes the connection whatever the outcome (a bounded
/// wait for the close to go out). `body` handles termination signals
/// itself ([`crate::signal::interruptible`] around a step, or its own select to
/// leave or close its channel first).
async fn closing<T>(
    mux: &SessionMux,
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let r = body.await;
    mux.client().shutdown().await;
    r
}

fn options(
    mls: bool,
    identity: MlsIdentity,
    rotation: Rotation,
    admission: Vec<String>,
) -> ChannelOptions {
    let config = ChannelConfig {
        mls,
        admission,
        ..ChannelConfig::default()
    };
    let mut o = ChannelOptions::new(config, mls.then_some(identity));
    o.rotation = mls.then_some(rotation);
    o
}

/// `channel create`: moderator until SIGINT/SIGTERM, then closes the channel.
pub async fn create(a: CreateArgs, out: Output) -> Result<()> {
    let name = Name::parse(&a.name).context("invalid channel name")?;
    let (mux, mls, rotation) = connect(&a.conn).await?;
    closing(&mux, async {
        let m =
            crate::signal::interruptible(start_moderating(&mux, &name, &a, mls, rotation)).await?;
        run_moderator(m, &name, out).await
    })
    .await
}

/// Creates the channel and sends the invitations.
async fn start_moderating(
    mux: &SessionMux,
    name: &Name,
    a: &CreateArgs,
    mls: MlsIdentity,
    rotation: Rotation,
) -> Result<ChannelModerator> {
    let mut opts = options(!a.no_mls, mls, rotation, a.allow.clone());
    opts.config.remove_unresponsive = a.remove_unresponsive;
    let m = Channel::create(mux, name, opts)
        .await
        .context("cannot create the channel")?;
    eprintln!(
        "moderating {name} as {} ({}; join by request: {})",
        mux.client().name(),
        if a.no_mls { "plaintext" } else { "MLS" },
        if a.allow.is_empty() {
            "no, invitation only".to_string()
        } else {
            a.allow.join(", ")
        }
    );
    for n in &a.invite {
        m.invite(n)
            .await
            .with_context(|| format!("cannot invite {n}"))?;
    }
    Ok(m)
}

/// Runs the channel until SIGINT/SIGTERM, then closes it.
async fn run_moderator(mut m: ChannelModerator, name: &Name, out: Output) -> Result<()> {
    let stop = crate::signal::terminated();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => {
                r?;
                break;
            }
            e = m.recv() => match e {
                Some(e) => {
                    print_event(name.as_str(), &e, out)?;
                }
                None => bail!("the channel driver ended"),
            },
        }
    }
    eprintln!("closing {name}");
    for e in m.close("the moderator stopped").await? {
        print_event(name.as_str(), &e, out)?;
    }
    Ok(())
}

/// Joins `name` over an open connection (by request to `moderator`, or
/// multicast to the channel).
async fn join_on(
    mux: &SessionMux,
    identity: MlsIdentity,
    rotation: Rotation,
    name: &Name,
    moderator: Option<&str>,
    mls: bool,
) -> Result<ChannelMember> {
    let moderator = moderator
        .map(Name::parse)
        .transpose()
        .context("invalid --moderator name")?;
    Channel::join(
        mux,
        name,
        moderator.as_ref(),
        options(mls, identity, rotation, Vec::new()),
    )
    .await
    .with_context(|| format!("cannot join {name}"))
}

/// `channel join`: prints decrypted messages with sender name and SPIFFE ID.
pub async fn join(a: JoinArgs, out: Output) -> Result<()> {
    let name = Name::parse(&a.name).context("invalid channel name")?;
    let (mux, identity, rotation) = connect(&a.conn).await?;
    closing(&mux, async {
        let mut m = crate::signal::interruptible(join_on(
            &mux,
            identity,
            rotation,
            &name,
            a.moderator.as_deref(),
            !a.no_mls,
        ))
        .await?;
        let (epoch, members) = m.joined();
        let ev = ChannelEvent::Joined {
            epoch,
            members: members.to_vec(),
        };
        print_event(name.as_str(), &ev, out)?;
        let stop = crate::signal::terminated();
        tokio::pin!(stop);
        let mut seen = 0u64;
        // Count reached, signal or timeout: leave the channel, then exit.
        let mut result = Ok(());
        while a.count.is_none_or(|c| seen < c) {
            let next = async {
                match a.timeout {
                    Some(t) => tokio::time::timeout(t, m.recv()).await.ok(),
                    None => Some(m.recv().await),
                }
            };
            tokio::select! {
                r = &mut stop => {
                    result = r;
                    break;
                }
                e = next => match e {
                    None => {
                        result = Err(crate::output::Failure::Timeout(format!(
                            "no message within {} ({seen} received)",
                            humantime::format_duration(a.timeout.unwrap_or_default())
                        ))
                        .into());
                        break;
                    }
                    Some(None) => bail!("the channel driver ended"),
                    Some(Some(e)) => {
                        let end = matches!(e, ChannelEvent::ChannelClosed { .. } | ChannelEvent::Removed { .. });
                        if print_event(name.as_str(), &e, out)? {
                            seen += 1;
                        }
                        if end {
                            // Our answer (e.g. the close ack) is queued:
                            // `closing` sends it before closing.
                            return Ok(());
                        }
                    }
                },
            }
        }
        for e in m.leave().await {
            print_event(name.as_str(), &e, out)?;
        }
        result
    })
    .await
}

/// `channel members`: the controller's view of the channel's subscribers;
/// with `--join`, joins (by request), prints the MLS roster, leaves.
pub async fn members(a: MembersArgs, out: Output) -> Result<()> {
    let name = Name::parse(&a.name).context("invalid channel name")?;
    if a.subscribers {
        return crate::admin::channel_subscribers(&a.ctl, name.as_str(), out).await;
    }
    let conn = ConnectArgs {
        node: a.node.clone(),
        id: a.ctl.id.clone(),
        as_name: a.as_name.clone(),
    };
    let (mux, identity, rotation) = connect(&conn).await?;
    closing(
        &mux,
        crate::signal::interruptible(async {
            let moderator = a.moderator.as_deref();
            let (epoch, members) = if a.join {
                let m = join_on(&mux, identity, rotation, &name, moderator, !a.no_mls).await?;
                let roster = m.members().await;
                m.leave().await;
                roster?
            } else {
                let moderator = moderator
                    .map(Name::parse)
                    .transpose()
                    .context("invalid --moderator name")?;
                Channel::roster(&mux, &name, moderator.as_ref(), a.timeout).await?
            };
            if out == Output::Json {
                print_json(&serde_json::json!({
                    "channel": name.as_str(),
                    "epoch": epoch,
                    "members": members.iter().map(|m| serde_json::json!({"name": m.name, "spiffe_id": m.spiffe_id})).collect::<Vec<_>>(),
                }))?;
            } else {
                println!("{name} at epoch {epoch}:");
                for mem in &members {
                    println!("  {}  {}", mem.name, mem.spiffe_id);
                }
            }
            Ok(())
        }),
    )
    .await
}

/// `channel publish --session`: join, publish one message, leave.
pub async fn publish(
    name: &Name,
    payload: &[u8],
    conn: &ConnectArgs,
    moderator: Option<&str>,
    mls: bool,
    out: Output,
) -> Result<()> {
    let (mux, identity, rotation) = connect(conn).await?;
    closing(
        &mux,
        crate::signal::interruptible(async {
            let m = join_on(&mux, identity, rotation, name, moderator, mls).await?;
            let published = m.publish(payload).await;
            m.leave().await;
            let p = published?;
            if out == Output::Json {
                print_json(&serde_json::json!({
                    "published": name.as_str(),
                    "bytes": payload.len(),
                    "epoch": p.epoch,
                    "seq": p.seq,
                    "mls": mls,
                }))?;
            } else {
                println!(
                    "published {} bytes to {name} ({} epoch {})",
                    payload.len(),
                    if mls { "MLS" } else { "plaintext" },
                    p.epoch
                );
            }
            Ok(())
        }),
    )
    .await
}

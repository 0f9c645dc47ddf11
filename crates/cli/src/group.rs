//! `weir group …` and `weir consume --group`: consumer groups from the command line.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prost::Message;
use serde_json::json;
use weir_client::{
    Client, ConsumerConfig, GroupConfig, GroupMode, OffsetStore, SeekTo, StartFrom, Strategy, v1,
};

use crate::args::{ConsumeArgs, GroupCommand, ResetTo, StrategyArg, TopicFormat};
use crate::consume::write_record;
use crate::exit::{Exit, user_error};

/// Longest one poll waits before checking for the end conditions.
const POLL_WAIT: Duration = Duration::from_millis(500);
/// Records handed over per poll.
const POLL_RECORDS_MAX: u32 = 10_000;

/// `weir consume TOPIC --group G`: runs as a group member until told to stop.
pub async fn consume(client: &Client, args: &ConsumeArgs) -> Result<()> {
    let group = args.group.clone().unwrap_or_default();
    let mut config = GroupConfig::new(group.clone());
    config.group_instance_id = args.instance_id.clone();
    config.session_timeout_ms = args.session_timeout_ms;
    config.heartbeat_interval_ms = (args.session_timeout_ms / 5).max(100);
    config.strategies = vec![match args.strategy {
        StrategyArg::Range => Strategy::Range,
        StrategyArg::Roundrobin => Strategy::RoundRobin,
        StrategyArg::CooperativeSticky => Strategy::CooperativeSticky,
    }];
    config.start_from = if let Some(t) = args.from_time {
        StartFrom::Timestamp(t)
    } else if args.from_beginning {
        StartFrom::Earliest
    } else {
        StartFrom::Latest
    };
    if args.at_most_once {
        config.delivery = weir_client::Delivery::AtMostOnce;
    }
    if let Some(member) = &args.broadcast {
        config.mode = GroupMode::Broadcast {
            member: member.clone(),
            offsets: match &args.offsets_file {
                Some(path) => OffsetStore::LocalFile(path.clone()),
                None => OffsetStore::Broker,
            },
        };
    }
    let mut fetch = ConsumerConfig::default();
    fetch.max_poll_records = POLL_RECORDS_MAX;
    config.consumer = fetch;
    // The topic must exist; a typo should fail, not wait forever.
    client
        .admin()
        .describe_topic(&args.topic)
        .await
        .with_context(|| format!("cannot consume {:?}", args.topic))?;
    let mut member = client.group_consumer(config, vec![args.topic.clone()])?;
    let mut out = BufWriter::new(std::io::stdout());
    let mut printed: u64 = 0;
    let mut last_message = Instant::now();
    let stop = stop_signal();
    tokio::pin!(stop);
    let result: Result<()> = loop {
        let records = tokio::select! {
            () = &mut stop => break Ok(()),
            r = member.poll(POLL_WAIT) => r?,
        };
        if !records.is_empty() {
            last_message = Instant::now();
        }
        for r in &records {
            write_record(&mut out, r, args.format, args.print_key)?;
            printed += 1;
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
        }
        out.flush()?;
        if args.max_messages.is_some_and(|max| printed >= max) {
            break Ok(());
        }
        if args
            .idle_exit_ms
            .is_some_and(|ms| last_message.elapsed() >= Duration::from_millis(ms))
        {
            break Ok(());
        }
    };
    // Commit what was printed and leave, so the group rebalances at once.
    member.close().await?;
    result
}

async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn run(client: &Client, cmd: GroupCommand) -> Result<()> {
    let admin = client.admin();
    let mut out = BufWriter::new(std::io::stdout());
    match cmd {
        GroupCommand::List { format } => {
            let groups = admin.list_groups().await?;
            match format {
                TopicFormat::Json => {
                    for g in &groups {
                        let line = json!({
                            "group": g.group_id,
                            "state": g.state,
                            "protocol_type": g.protocol_type,
                            "members": g.members,
                        });
                        writeln!(out, "{line}")?;
                    }
                }
                TopicFormat::Text => {
                    writeln!(out, "{:<32}  {:<20}  {:>7}", "GROUP", "STATE", "MEMBERS")?;
                    for g in &groups {
                        writeln!(out, "{:<32}  {:<20}  {:>7}", g.group_id, g.state, g.members)?;
                    }
                }
            }
        }
        GroupCommand::Describe { group, format } => {
            describe(client, &group, format, &mut out).await?
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            to,
        } => {
            let info = admin.describe_topic(&topic).await?;
            let partitions: Vec<u32> = match partition {
                Some(p) if p >= info.partition_count => {
                    return Err(user_error(
                        Exit::NotFound,
                        format!("topic {topic:?} has no partition {p}"),
                    ));
                }
                Some(p) => vec![p],
                None => (0..info.partition_count).collect(),
            };
            let seeker = client.consumer(ConsumerConfig::default())?;
            let mut offsets = Vec::with_capacity(partitions.len());
            for p in partitions {
                let offset = match &to {
                    ResetTo {
                        to_earliest: true, ..
                    } => seeker.offset_for(&topic, p, SeekTo::Beginning).await?,
                    ResetTo {
                        to_latest: true, ..
                    } => seeker.offset_for(&topic, p, SeekTo::End).await?,
                    ResetTo {
                        to_time: Some(t), ..
                    } => seeker.offset_for(&topic, p, SeekTo::Timestamp(*t)).await?,
                    ResetTo {
                        to_offset: Some(o), ..
                    } => *o,
                    _ => return Err(user_error(Exit::Usage, "say where to reset to")),
                };
                offsets.push((topic.clone(), p, offset));
            }
            let statuses = admin
                .reset_offsets(&group, offsets.clone())
                .await
                .with_context(|| format!("cannot reset the offsets of group {group:?}"))?;
            for ((t, p, o), s) in offsets.iter().zip(&statuses) {
                match s.status.as_ref().filter(|s| !s.is_ok()) {
                    None => writeln!(out, "{t}/{p} -> {o}")?,
                    Some(s) => writeln!(out, "{t}/{p}: {}", s.message)?,
                }
            }
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            writeln!(out, "deleted the committed offsets of group {group}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Members with their partitions; per partition the committed offset, end and lag.
async fn describe(
    client: &Client,
    group: &str,
    format: TopicFormat,
    out: &mut impl Write,
) -> Result<()> {
    let admin = client.admin();
    let d = admin.describe_group(group).await?;
    let committed = admin.group_offsets(group).await?;
    let mut owner: BTreeMap<(String, u32), String> = BTreeMap::new();
    for m in &d.members {
        if let Ok(a) = v1::ConsumerAssignment::decode(m.assignment.clone()) {
            for tp in a.partitions {
                for p in tp.partitions {
                    owner.insert((tp.topic.clone(), p), m.member_id.clone());
                }
            }
        }
    }
    // Every partition that is committed or owned.
    let mut rows: BTreeMap<(String, u32), Option<i64>> =
        owner.keys().map(|k| (k.clone(), None)).collect();
    for c in &committed {
        rows.insert(
            (c.topic.clone(), c.partition),
            (c.offset >= 0).then_some(c.offset),
        );
    }
    let seeker = client.consumer(ConsumerConfig::default())?;
    let mut table = Vec::with_capacity(rows.len());
    for ((topic, p), committed) in rows {
        let end = seeker.offset_for(&topic, p, SeekTo::End).await.ok();
        let lag = match (committed, end) {
            (Some(c), Some(e)) => Some((e - c).max(0)),
            _ => None,
        };
        let member = owner.get(&(topic.clone(), p)).cloned().unwrap_or_default();
        table.push((topic, p, committed, end, lag, member));
    }
    match format {
        TopicFormat::Json => {
            let members: Vec<_> = d
                .members
                .iter()
                .map(|m| json!({"member_id": m.member_id, "instance_id": m.group_instance_id, "client_host": m.client_host}))
                .collect();
            let partitions: Vec<_> = table
                .iter()
                .map(|(t, p, c, e, l, m)| json!({"topic": t, "partition": p, "committed": c, "log_end": e, "lag": l, "member": m}))
                .collect();
            let doc = json!({
                "group": group, "state": d.state, "protocol": d.protocol,
                "generation": d.generation_id, "members": members, "partitions": partitions,
            });
            writeln!(out, "{doc}")?;
        }
        TopicFormat::Text => {
            let dash = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            writeln!(out, "group:      {group}")?;
            writeln!(out, "state:      {}", d.state)?;
            writeln!(out, "protocol:   {}", d.protocol)?;
            writeln!(out, "generation: {}", d.generation_id)?;
            writeln!(out, "members:    {}", d.members.len())?;
            for m in &d.members {
                let instance = if m.group_instance_id.is_empty() {
                    String::new()
                } else {
                    format!(" (instance {})", m.group_instance_id)
                };
                writeln!(out, "  {}{instance} from {}", m.member_id, m.client_host)?;
            }
            writeln!(
                out,
                "{:<24}  {:>9}  {:>12}  {:>12}  {:>10}  MEMBER",
                "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
            )?;
            for (t, p, c, e, l, m) in &table {
                writeln!(
                    out,
                    "{t:<24}  {p:>9}  {:>12}  {:>12}  {:>10}  {m}",
                    dash(*c),
                    dash(*e),
                    dash(*l)
                )?;
            }
        }
    }
    Ok(())
}

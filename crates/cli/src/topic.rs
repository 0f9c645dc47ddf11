//! `weir topic create | list | describe | delete`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::{Context, Result};
use serde_json::json;
use weir_client::{Client, v1};

use crate::args::{PAIRS_MAX, TopicCommand, TopicFormat};
use crate::exit::{Exit, user_error};

pub async fn run(client: &Client, cmd: TopicCommand) -> Result<()> {
    let admin = client.admin();
    let mut out = std::io::stdout().lock();
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            if configs.len() > PAIRS_MAX {
                return Err(user_error(
                    Exit::Usage,
                    format!("at most {PAIRS_MAX} --config values"),
                ));
            }
            let configs: HashMap<String, String> = configs.into_iter().collect();
            let info = admin
                .create_topic(&name, partitions, configs)
                .await
                .with_context(|| format!("cannot create topic {name:?}"))?;
            writeln!(
                out,
                "created topic {} with {} partition{}",
                info.name,
                info.partition_count,
                if info.partition_count == 1 { "" } else { "s" }
            )?;
        }
        TopicCommand::List { format } => {
            let mut topics = admin.list_topics().await.context("cannot list topics")?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            match format {
                TopicFormat::Json => {
                    let list: Vec<_> = topics
                        .iter()
                        .map(|t| json!({"name": t.name, "partitions": t.partition_count}))
                        .collect();
                    writeln!(out, "{}", serde_json::Value::Array(list))?;
                }
                TopicFormat::Text => {
                    let width = topics
                        .iter()
                        .map(|t| t.name.len())
                        .max()
                        .unwrap_or(0)
                        .max(4);
                    writeln!(out, "{:width$}  PARTITIONS", "NAME")?;
                    for t in &topics {
                        writeln!(out, "{:width$}  {}", t.name, t.partition_count)?;
                    }
                }
            }
        }
        TopicCommand::Describe { name, format } => {
            let info = admin
                .describe_topic(&name)
                .await
                .with_context(|| format!("cannot describe topic {name:?}"))?;
            describe(&mut out, &info, format)?;
        }
        TopicCommand::Delete { name } => {
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("cannot delete topic {name:?}"))?;
            writeln!(out, "deleted topic {name}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn describe(out: &mut impl Write, info: &v1::TopicInfo, format: TopicFormat) -> Result<()> {
    let configs: BTreeMap<&String, &String> = info.configs.iter().collect();
    let mut parts = info.partitions.clone();
    parts.sort_by_key(|p| p.partition);
    match format {
        TopicFormat::Json => {
            let parts: Vec<_> = parts
                .iter()
                .map(|p| {
                    json!({
                        "partition": p.partition,
                        "log_start_offset": p.log_start_offset,
                        "high_watermark": p.high_watermark,
                        "log_end_offset": p.log_end_offset,
                        "size_bytes": p.size_bytes,
                        "segments": p.segments,
                        "leader_epoch": p.leader_epoch,
                    })
                })
                .collect();
            let doc = json!({
                "name": info.name,
                "id": info.id,
                "partition_count": info.partition_count,
                "configs": configs,
                "partitions": parts,
            });
            writeln!(out, "{doc}")?;
        }
        TopicFormat::Text => {
            writeln!(out, "topic:      {}", info.name)?;
            writeln!(out, "id:         {}", info.id)?;
            writeln!(out, "partitions: {}", info.partition_count)?;
            writeln!(out, "configs:")?;
            for (k, v) in &configs {
                writeln!(out, "  {k} = {v}")?;
            }
            writeln!(
                out,
                "{:>9}  {:>12}  {:>14}  {:>12}  {:>12}  {:>8}  {:>12}",
                "PARTITION",
                "LOG-START",
                "HIGH-WATERMARK",
                "LOG-END",
                "SIZE-BYTES",
                "SEGMENTS",
                "LEADER-EPOCH"
            )?;
            for p in &parts {
                writeln!(
                    out,
                    "{:>9}  {:>12}  {:>14}  {:>12}  {:>12}  {:>8}  {:>12}",
                    p.partition,
                    p.log_start_offset,
                    p.high_watermark,
                    p.log_end_offset,
                    p.size_bytes,
                    p.segments,
                    p.leader_epoch
                )?;
            }
        }
    }
    Ok(())
}

//! Command-line syntax (clap derive) and the parsers that bound every value.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Most `--config` / `--header` pairs accepted on one command line.
pub const PAIRS_MAX: usize = 256;
/// Longest `--key` / `--key-separator` / `k=v` argument accepted.
pub const ARG_BYTES_MAX: usize = 64 * 1024;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (also when stdout is closed early, e.g. `| head`)
  1  unexpected error (server or protocol failure)
  2  usage error: bad flag or value, unreadable or invalid server config
  3  cannot reach the server, or the connection was lost
  4  timed out waiting for the server
  5  not found: unknown topic or partition
  6  already exists: the topic exists
  7  invalid: rejected by the server or the client (topic name, partition count,
     config, record too large, malformed input line)
  8  local I/O error: an input file cannot be read, or `weir server` cannot bind
     its address or open its data directory";

/// Weir: a message broker. Run a server, manage topics, produce and consume.
#[derive(Debug, Parser)]
#[command(name = "weir", version, after_help = EXIT_CODES, arg_required_else_help = true)]
pub struct Cli {
    /// Server address (host:port) for client commands.
    #[arg(
        long,
        global = true,
        env = "WEIR_ADDR",
        default_value = "127.0.0.1:6086"
    )]
    pub addr: String,
    /// Timeout for connecting and for each request, in milliseconds.
    #[arg(long, global = true, default_value_t = 30_000,
          value_parser = clap::value_parser!(u32).range(1..=3_600_000))]
    pub timeout_ms: u32,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker (configuration: file, then WEIR_* environment, then flags).
    Server(ServerArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send one message per input line (from a file or stdin) to a topic.
    Produce(ProduceArgs),
    /// Print messages of a topic.
    Consume(ConsumeArgs),
    /// Measure throughput and latency (producers, consumers, groups, end to end).
    Bench(crate::bench::BenchArgs),
    /// List and describe consumer groups; reset or delete their committed offsets.
    #[command(subcommand)]
    Group(GroupCommand),
}

/// `weir group …`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group with members or committed offsets.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = TopicFormat::Text)]
        format: TopicFormat,
    },
    /// Members, assignments, and per partition the committed offset, log end and lag.
    Describe {
        /// Group id.
        #[arg(value_parser = parse_bounded)]
        group: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TopicFormat::Text)]
        format: TopicFormat,
    },
    /// Set the committed offsets of a group without members.
    ResetOffsets {
        /// Group id.
        #[arg(value_parser = parse_bounded)]
        group: String,
        /// Topic whose offsets to set.
        #[arg(long, value_parser = parse_bounded)]
        topic: String,
        /// Only this partition (default: all).
        #[arg(long)]
        partition: Option<u32>,
        /// Where to.
        #[command(flatten)]
        to: ResetTo,
    },
    /// Forget the committed offsets of a group without members.
    Delete {
        /// Group id.
        #[arg(value_parser = parse_bounded)]
        group: String,
    },
}

/// Target of `weir group reset-offsets` (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    /// The oldest retained offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// The end of the log.
    #[arg(long)]
    pub to_latest: bool,
    /// The first offset at or after this time (RFC 3339 or ms since the epoch).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to_time: Option<i64>,
    /// This offset.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub to_offset: Option<i64>,
}

/// Assignment strategy of `weir consume --group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Consecutive ranges per topic (eager).
    Range,
    /// Dealt out in turn (eager).
    Roundrobin,
    /// Sticky and incremental: only partitions that must move are revoked.
    CooperativeSticky,
}

/// `weir server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides the file and WEIR_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Native protocol listen address, e.g. 0.0.0.0:6086 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub native_addr: Option<String>,
}

/// Output format of topic commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopicFormat {
    /// Aligned, human-readable text.
    Text,
    /// One JSON document.
    Json,
}

/// `weir topic …`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, short, default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        partitions: u32,
        /// Per-topic setting, e.g. --config fsync=never (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_pair)]
        configs: Vec<(String, String)>,
    },
    /// List topics with their partition counts.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = TopicFormat::Text)]
        format: TopicFormat,
    },
    /// Show a topic's settings and per-partition offsets.
    Describe {
        /// Topic name.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TopicFormat::Text)]
        format: TopicFormat,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// Acknowledgement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Durable per the topic's fsync policy.
    All,
    /// Appended by the leader.
    Leader,
    /// No acknowledgement at all.
    None,
}

/// `weir produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Read messages from this file instead of stdin.
    #[arg(long, short, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Key for every message.
    #[arg(long, short, conflicts_with = "key_separator", value_parser = parse_bounded)]
    pub key: Option<String>,
    /// Split each line at the first SEP into key and value (a line without SEP is an error).
    #[arg(long, value_name = "SEP", value_parser = parse_separator)]
    pub key_separator: Option<String>,
    /// Header for every message (repeatable).
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub headers: Vec<(String, String)>,
    /// Partition to write to; default: by key hash, else spread round-robin.
    #[arg(long, short)]
    pub partition: Option<u32>,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// How long a batch waits for more messages.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=60_000))]
    pub linger_ms: u32,
    /// Largest batch in bytes; also bounds one line.
    #[arg(long, default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    pub batch_bytes: u32,
}

/// Output format of `weir consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsumeFormat {
    /// The value, one per line.
    Text,
    /// One JSON object per line with topic, partition, offset, timestamp, key, value
    /// and headers; bytes that are not UTF-8 are base64 with a `*_base64: true` flag.
    Json,
}

/// `weir consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition (default: all).
    #[arg(long, short)]
    pub partition: Option<u32>,
    /// Start at the oldest message (the default without --follow).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Start at this offset (needs --partition).
    #[arg(long, requires = "partition", conflicts_with = "from_time",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: Option<i64>,
    /// Start at the first message at or after this time: RFC 3339
    /// (2024-05-01T12:00:00Z) or milliseconds since the epoch.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from_time: Option<i64>,
    /// Keep waiting for new messages (default: stop at the end offsets seen at start;
    /// with --follow and no start flag, only new messages are printed).
    #[arg(long, short)]
    pub follow: bool,
    /// Stop after this many messages.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub max_messages: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ConsumeFormat::Text)]
    pub format: ConsumeFormat,
    /// In text format, print the key and a tab before the value.
    #[arg(long)]
    pub print_key: bool,
    /// Consume as a member of this consumer group: partitions are shared with the other
    /// members and positions committed on the broker. Runs until --max-messages,
    /// --idle-exit-ms, SIGTERM or Ctrl-C. New partitions start at --from-beginning or
    /// --from-time, else at the end.
    #[arg(long, short, value_parser = parse_bounded, conflicts_with_all = ["partition", "offset"])]
    pub group: Option<String>,
    /// Static membership id: a restart within the session timeout keeps the partitions.
    #[arg(long, requires = "group", value_parser = parse_bounded)]
    pub instance_id: Option<String>,
    /// Assignment strategy of the group.
    #[arg(long, value_enum, requires = "group", default_value_t = StrategyArg::CooperativeSticky)]
    pub strategy: StrategyArg,
    /// Session timeout of the group membership.
    #[arg(long, requires = "group", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1_000..=1_800_000))]
    pub session_timeout_ms: u32,
    /// Broadcast: every member reads every message; this names the member, whose
    /// positions are kept apart from the others'.
    #[arg(long, requires = "group", value_name = "MEMBER", value_parser = parse_bounded)]
    pub broadcast: Option<String>,
    /// With --broadcast: keep positions in this local file instead of on the broker.
    #[arg(long, requires = "broadcast")]
    pub offsets_file: Option<std::path::PathBuf>,
    /// Commit before printing (a crash may skip messages, none is printed twice).
    #[arg(long, requires = "group")]
    pub at_most_once: bool,
    /// With --group: exit after this long without a message.
    #[arg(long, requires = "group", value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_exit_ms: Option<u64>,
}

fn parse_bounded(s: &str) -> Result<String, String> {
    if s.len() > ARG_BYTES_MAX {
        return Err(format!("longer than {ARG_BYTES_MAX} bytes"));
    }
    Ok(s.to_owned())
}

fn parse_separator(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the separator must not be empty".into());
    }
    parse_bounded(s)
}

/// `KEY=VALUE` with a non-empty key.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    let s = parse_bounded(s)?;
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Milliseconds since the epoch, or an RFC 3339 date-time.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| format!("{s:?} is out of range"));
    }
    parse_rfc3339_ms(s).ok_or_else(|| {
        format!("{s:?} is neither milliseconds nor an RFC 3339 time like 2024-05-01T12:00:00Z")
    })
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into ms since the epoch.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let sep_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds from the first three fraction digits; finer digits are dropped.
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10_i64.pow(3 - frac.len() as u32);
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_s;
    Some(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1714564800000"), Ok(1_714_564_800_000));
        assert_eq!(parse_time("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_time("2024-05-01T12:00:00.25Z"), Ok(1_714_564_800_250));
        assert_eq!(
            parse_time("2024-05-01T14:00:00.123456+02:00"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(parse_time("1970-01-01T00:00:00-00:30"), Ok(1_800_000));
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        for bad in [
            "",
            "yesterday",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "-5",
            "99999999999999999999",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pairs_parse() {
        assert_eq!(parse_pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_pair("a="), Ok(("a".into(), String::new())));
        assert!(parse_pair("=b").is_err());
        assert!(parse_pair("ab").is_err());
    }
}

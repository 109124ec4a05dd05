//! `choreo capture`: record Kafka topics to a capture file.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use choreo_kafka::{ReadFrom, ReaderOptions, RecordReader, Topics};
use choreo_trace::capture::{Format, Writer};

use super::kafka::{KafkaArgs, trace_record};
use crate::EXIT_OK;

/// Record Kafka topics to a capture file (Avro object container, or JSON
/// lines for a .jsonl name) that `choreo trace` reads.
///
/// Reads without joining a consumer group (nothing is committed, nothing
/// changes on the cluster) from the beginning to the end of each partition as
/// of the start, or with --follow until interrupted (ctrl-c), then closes the
/// file cleanly. To record everything a tracer needs, include the receipts
/// topic (`choreo.receipts`) and the dead-letter topics (`*.dlq`), e.g.
/// `--pattern '(orders|payments|choreo\.receipts|.*\.dlq)'`.
///
/// Exit codes: 0 captured; 2 usage, connection or file error.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topics to record, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "pattern",
        required_unless_present = "pattern"
    )]
    topics: Vec<String>,
    /// Record every topic whose whole name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pattern: Option<String>,
    /// The capture file to write (.avro, or .jsonl for JSON lines).
    #[arg(long, short)]
    output: PathBuf,
    /// Keep recording new records until interrupted.
    #[arg(long)]
    follow: bool,
    /// Only records published from now on.
    #[arg(long, conflicts_with = "follow")]
    from_now: bool,
    /// No progress on the terminal.
    #[arg(long, short)]
    quiet: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    let config = args.kafka.config()?;
    let topics = match (&args.pattern, args.topics.is_empty()) {
        (Some(p), _) => Topics::pattern(p.clone()),
        (None, false) => Topics::names(args.topics.clone()),
        (None, true) => bail!("name the topics to record with --topics a,b or --pattern REGEX"),
    };
    let mut options = ReaderOptions::new(topics);
    if args.follow {
        options = options.follow();
    }
    if args.from_now {
        options = options.from(ReadFrom::End).follow();
    }
    let format = Format::from_path(&args.output);
    let mut writer = Writer::create(&args.output, format)
        .with_context(|| format!("cannot create the capture '{}'", args.output.display()))?;
    let rt = super::runtime()?;
    let show = !args.quiet && std::io::stderr().is_terminal();
    let written = rt.block_on(async {
        let mut reader = RecordReader::open(&config, options).await?;
        let mut n: u64 = 0;
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            let next = tokio::select! {
                _ = &mut interrupted => break,
                r = reader.next() => r,
            };
            let Some(record) = next else { break };
            let record = trace_record(record?);
            writer
                .write(&record)
                .with_context(|| format!("cannot write '{}'", args.output.display()))?;
            n += 1;
            if show && n.is_multiple_of(10_000) {
                eprint!("\rchoreo: {n} records captured");
            }
        }
        Ok::<u64, anyhow::Error>(n)
    })?;
    if show {
        eprint!("\r");
    }
    writer
        .finish()
        .with_context(|| format!("cannot finish '{}'", args.output.display()))?;
    eprintln!(
        "choreo: captured {written} records to '{}'",
        args.output.display()
    );
    Ok(EXIT_OK)
}

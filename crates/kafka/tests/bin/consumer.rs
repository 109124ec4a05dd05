//! A consumer process for `tests/consumer_crash.rs`: joins group `worker` on
//! topic `jobs` (configured from `CHOREO_KAFKA_*`), and for each delivery
//! appends `start <n>` and `done <n>` to `$CHOREO_TEST_LOG` before acking it.
//! With `CHOREO_TEST_HOLD=<n>`, job `n` is started and never settled, like a
//! handler stuck when the process dies.

use std::io::Write;
use std::time::Duration;

use choreo_core::{Bus, SubscribeOptions, Subscription};
use choreo_kafka::KafkaBus;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("kafka-test-consumer: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let log_path = std::env::var("CHOREO_TEST_LOG")?;
    let hold: Option<u64> = match std::env::var("CHOREO_TEST_HOLD") {
        Ok(v) => Some(v.parse()?),
        Err(_) => None,
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let bus = KafkaBus::from_env()?;
    let mut sub = bus
        .subscribe(SubscribeOptions::new("worker", ["jobs"]))
        .await?;
    writeln!(log, "joined")?;
    let mut held = Vec::new();
    while let Some(d) = sub.next().await {
        let Ok(d) = d else { continue };
        let n: u64 = serde_json::from_slice::<serde_json::Value>(&d.envelope().data)?["n"]
            .as_u64()
            .ok_or("a job without n")?;
        writeln!(log, "start {n}")?;
        if hold == Some(n) {
            held.push(d);
            continue;
        }
        // Some work, so that a kill lands mid-flow.
        tokio::time::sleep(Duration::from_millis(3)).await;
        writeln!(log, "done {n}")?;
        d.ack();
    }
    Ok(())
}

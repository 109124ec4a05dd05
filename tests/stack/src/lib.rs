//! Helpers of the tests of `docker/`: the repository's files, the binaries
//! under test, a Prometheus of the test's own, and the PromQL that the
//! dashboards and the alerting rules hold.
//!
//! ```no_run
//! use choreo_stack_tests::{prom::Prometheus, repo};
//!
//! let prometheus = Prometheus::start("scrape_configs: []\n").unwrap();
//! for q in repo::dashboards().iter().flat_map(|d| d.queries()) {
//!     println!("{} {}", q.location(), q.expr);
//! }
//! # drop(prometheus);
//! ```
//!
//! The tests themselves are in `tests/`: `config.rs` checks the files against
//! each other, the crates and the real tools (`promtool`, the binaries'
//! `--help`); `live.rs` runs every dashboard query and alert expression
//! against a real Prometheus scraping a live tracer fed by `choreo simulate`.
//!
//! Nothing here installs anything: `prometheus` and `promtool` come from
//! Debian's `prometheus` package, which `./scripts/test.sh` installs. A test
//! that needs a missing tool fails and says how to install it.

pub mod bins;
pub mod process;
pub mod prom;
pub mod promql;
pub mod repo;

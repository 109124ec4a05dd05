//! The integration tests of choreo-stack-tests, one binary with a module per topic
//! (one link instead of one per file).

mod commands;
mod config;
mod live;

//! The integration tests of choreo-topology, one binary with a module per topic
//! (one link instead of one per file).

mod golden;
mod properties;
mod queries;
mod render;

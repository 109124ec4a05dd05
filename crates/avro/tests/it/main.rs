//! The integration tests of choreo-avro, one binary with a module per topic
//! (one link instead of one per file).

mod evolution;
mod registry_http;
